//! Redacting text from the queue's records: every string naming a needle goes from arguments
//! and error histories, whatever the job's state; other jobs and other text stay.

use jobs::NewJob;
use serde_json::{Value, json};

use crate::support::fresh_db;

#[tokio::test]
async fn redact_erases_every_string_naming_a_needle_from_args_and_errors_and_nothing_else() {
    let db = fresh_db().await;
    let named = db
        .add(NewJob::new(
            "send",
            json!({"to": "Ann.Example@Mail.test", "n": 3, "cc": ["keep", "ann.example@mail.test"]}),
        ))
        .await;
    let failed = db.add(NewJob::new("send", json!({"n": 4}))).await;
    sqlx::query(
        "update onboard.job set state = 'discarded', finalized_at = now(),
                errors = array[jsonb_build_object('attempt', 1, 'message', 'refused ann.example@mail.test'),
                               jsonb_build_object('attempt', 2, 'message', 'timeout')]
          where id = $1",
    )
    .bind(failed)
    .execute(&db.pool)
    .await
    .unwrap();
    let other = db
        .add(NewJob::new("send", json!({"to": "bob@mail.test"})))
        .await;

    let mut conn = db.pool.acquire().await.unwrap();
    let needles = ["ANN.example@mail.test".to_owned(), String::new()];
    let changed = jobs::redact::redact(&mut conn, &needles, "erased")
        .await
        .unwrap();
    assert_eq!(changed, 2);

    let read = |id: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (Value, Value)>(
                "select args, to_jsonb(errors) from onboard.job where id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        read(named).await,
        (
            json!({"to": "erased", "n": 3, "cc": ["keep", "erased"]}),
            json!([])
        )
    );
    let (_, errors) = read(failed).await;
    assert_eq!(errors[0]["message"], "erased");
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[1]["message"], "timeout");
    assert_eq!(read(other).await.0, json!({"to": "bob@mail.test"}));
    assert_eq!(db.state(failed).await, "discarded");
    // Nothing left to redact: a second call changes nothing.
    assert_eq!(
        jobs::redact::redact(&mut conn, &needles, "erased")
            .await
            .unwrap(),
        0
    );
}
