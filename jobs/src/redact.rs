//! Redacting text from the queue's records: a caller that must forget something (given as
//! needles of text) erases it from every job's arguments and error history, which are kept
//! until retention deletes the job.

use serde_json::Value;
use sqlx::PgConnection;

// A scan of the table (arguments are free-form); rows are locked in id order.
const MATCHING: &str = "
select id, args, to_jsonb(errors) from onboard.job
 where exists (select 1 from unnest($1::text[]) n
                where strpos(lower(args::text), n) > 0 or strpos(lower(errors::text), n) > 0)
 order by id
 for update";

const REWRITE: &str = "
update onboard.job j
   set args = r.args,
       errors = array(select jsonb_array_elements(r.errors))
  from unnest($1::bigint[], $2::jsonb[], $3::jsonb[]) as r(id, args, errors)
 where j.id = r.id";

/// Replaces every string in any job's arguments or errors that contains one of `needles`
/// (case-insensitive; empty needles are ignored) with `replacement`, and drops object entries
/// whose key contains one. Returns the jobs changed.
pub async fn redact(
    conn: &mut PgConnection,
    needles: &[String],
    replacement: &str,
) -> Result<u64, sqlx::Error> {
    let needles: Vec<String> = needles
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| n.to_lowercase())
        .collect();
    if needles.is_empty() {
        return Ok(0);
    }
    let rows: Vec<(i64, Value, Value)> = sqlx::query_as(MATCHING)
        .bind(&needles)
        .fetch_all(&mut *conn)
        .await?;
    let (mut ids, mut args, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (id, mut a, mut e) in rows {
        let changed = redact_value(&mut a, &needles, replacement)
            | redact_value(&mut e, &needles, replacement);
        if changed {
            ids.push(id);
            args.push(a);
            errors.push(e);
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(REWRITE)
        .bind(&ids)
        .bind(&args)
        .bind(&errors)
        .execute(conn)
        .await?
        .rows_affected())
}

fn names_any(text: &str, needles: &[String]) -> bool {
    let text = text.to_lowercase();
    needles.iter().any(|n| text.contains(n.as_str()))
}

/// Redacts `value` in place; true if anything changed.
fn redact_value(value: &mut Value, needles: &[String], replacement: &str) -> bool {
    match value {
        Value::String(text) if names_any(text, needles) => {
            *text = replacement.to_owned();
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            redact_value(item, needles, replacement) | changed
        }),
        Value::Object(map) => {
            let before = map.len();
            map.retain(|key, _| !names_any(key, needles));
            let dropped = map.len() != before;
            map.values_mut().fold(dropped, |changed, item| {
                redact_value(item, needles, replacement) | changed
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_and_keys_naming_a_needle_go_and_the_rest_stays() {
        let needles = vec!["a@b.example".to_owned()];
        let mut value = json!({
            "to": "A@B.example", "n": 1, "list": ["keep", "mail a@b.example now"],
            "a@b.example": true, "nested": {"x": "y"}
        });
        assert!(redact_value(&mut value, &needles, "gone"));
        assert_eq!(
            value,
            json!({"to": "gone", "n": 1, "list": ["keep", "gone"], "nested": {"x": "y"}})
        );
        assert!(!redact_value(&mut value, &needles, "gone"));
    }
}
