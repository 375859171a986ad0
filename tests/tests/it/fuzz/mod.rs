//! Hostile input (issue 9): property-based fuzzing of the Svix header parser and verifier, the
//! Clerk envelope parser, the onboarding API's body parser, and (in [`db`]) the Clerk event
//! handlers on a real database. Inputs: arbitrary bytes, arbitrary JSON, deep nesting, huge
//! strings, NULs, unknown fields, and Clerk fixtures with fields replaced, removed or added.
//! Every input must end in a defined result, never a panic, and a handler's error on any input
//! must be permanent (a malformed payload never retries for ever).
//!
//! Short by default (the whole suite in well under a minute); by hand, for N cases per target:
//! `FUZZ_CASES=1000000 cargo test --release -p integration-tests --test it fuzz::`
//! (`FUZZ_DB_CASES` sets the database target's separately; it defaults to `FUZZ_CASES`).

mod db;

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use ingress::settings::WebhookSecrets;
use ingress::signature::{SignatureError, SvixHeaders};
use onboarding::inbox::{ClerkEnvelope, EnvelopeError, ROUTED, Route};

use integration_tests::stack::fixture;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const FIXTURES: [&str; 13] = [
    "organization.created.json",
    "organization.deleted.json",
    "organization.updated.json",
    "organizationInvitation.accepted.json",
    "organizationInvitation.created.json",
    "organizationInvitation.revoked.json",
    "organizationMembership.created.json",
    "organizationMembership.deleted.json",
    "organizationMembership.updated.json",
    "session.created.json",
    "user.created.json",
    "user.deleted.json",
    "user.updated.json",
];

/// The fixtures, read once (a case clones one).
fn fixtures() -> &'static [Value] {
    static FIXTURE_VALUES: OnceLock<Vec<Value>> = OnceLock::new();
    FIXTURE_VALUES.get_or_init(|| FIXTURES.iter().map(|name| fixture(name)).collect())
}

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .or_else(|| std::env::var("FUZZ_CASES").ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    })
}

/// Text with the characters that break things: NUL, other controls, quotes, backslashes,
/// non-BMP characters, and now and then a huge run.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => "\\PC{0,24}",
        20 => prop::collection::vec(
            prop_oneof![Just('\0'), Just('"'), Just('\\'), Just('\u{1F600}'), Just('\u{7f}'), any::<char>()],
            0..16
        )
        .prop_map(|c| c.into_iter().collect()),
        5 => Just("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S".to_owned()),
        5 => Just("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S".to_owned()),
        1 => (1usize..300_000).prop_map(|n| "é".repeat(n / 2)),
        2 => (1usize..10_000).prop_map(|n| "a@".repeat(n)),
    ]
}

/// Any JSON value: scalars (huge numbers included), hostile strings, arrays, objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(hostile_text(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (object keys and array indexes) in `value`.
fn paths(value: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Value::String(k.clone()));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(json!(i));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(value: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match (v, step) {
        (Value::Object(map), Value::String(k)) => map.get_mut(k),
        (Value::Array(items), Value::Number(i)) => {
            items.get_mut(usize::try_from(i.as_u64()?).ok()?)
        }
        _ => None,
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    AddUnknown(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), json_value()).prop_map(|(p, v)| Mutation::Replace(p, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        2 => (any::<usize>(), hostile_text(), json_value()).prop_map(|(p, k, v)| Mutation::AddUnknown(p, k, v)),
    ]
}

/// A Clerk fixture with a few fields replaced by anything, removed, or joined by unknown ones.
fn mutated_fixture() -> impl Strategy<Value = Value> {
    (0..FIXTURES.len(), prop::collection::vec(mutation(), 0..4)).prop_map(|(which, mutations)| {
        let mut event = fixtures()[which].clone();
        for m in mutations {
            let mut all = Vec::new();
            paths(&event, &mut Vec::new(), &mut all);
            match m {
                Mutation::Replace(p, v) => {
                    if let Some(slot) = at(&mut event, &all[p % all.len()]) {
                        *slot = v;
                    }
                }
                Mutation::Remove(p) => {
                    let path = &all[p % all.len()];
                    if let Some((last, parent)) = path.split_last()
                        && let (Some(Value::Object(map)), Value::String(k)) =
                            (at(&mut event, parent), last)
                    {
                        map.remove(k);
                    }
                }
                Mutation::AddUnknown(p, k, v) => {
                    if let Some(Value::Object(map)) = at(&mut event, &all[p % all.len()]) {
                        map.insert(k, v);
                    }
                }
            }
        }
        event
    })
}

/// `[[[…]]]` or `{"a":{"a":…}}`, up to 5,000 deep, optionally around an envelope.
fn deep_nesting() -> impl Strategy<Value = Vec<u8>> {
    (0usize..5_000, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, in_data)| {
        let (open, close) = if arrays {
            ("[", "]")
        } else {
            (r#"{"a":"#, "}")
        };
        let inner = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        if in_data {
            format!(r#"{{"type":"user.created","data":{{"id":"user_1","x":{inner}}}}}"#)
                .into_bytes()
        } else {
            inner.into_bytes()
        }
    })
}

/// Bodies of every shape: raw bytes, JSON, mutated fixtures, deep nesting.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..512),
        3 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        4 => mutated_fixture().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => deep_nesting(),
    ]
}

#[test]
fn fuzz_the_envelope_parser_never_panics_and_answers_consistently() {
    let mut runner = runner(cases("FUZZ_ENVELOPE_CASES", 2_000));
    runner
        .run(&body(), |body| {
            let parsed = ClerkEnvelope::parse(&body);
            prop_assert_eq!(&parsed, &ClerkEnvelope::parse(&body), "not deterministic");
            match parsed {
                Ok(envelope) => {
                    let routed = ROUTED.iter().find(|(t, _)| *t == envelope.event_type);
                    match (routed, envelope.route) {
                        (Some((_, kind)), Route::Job(job)) => prop_assert_eq!(*kind, job),
                        (None, Route::Ignore) => {}
                        other => prop_assert!(false, "wrong route {other:?}"),
                    }
                    prop_assert!(
                        !envelope.event_type.is_empty() && envelope.event_type.len() <= 128
                    );
                    if envelope.event_type == "organization.created" {
                        prop_assert!(onboarding::inbox::organization_created(&body).is_ok());
                    }
                }
                Err(
                    EnvelopeError::Shape(_)
                    | EnvelopeError::EventType
                    | EnvelopeError::OrganizationId,
                ) => {}
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_the_api_body_parser_never_panics_and_names_a_field_for_every_refusal() {
    let api_body = prop_oneof![
        1 => body(),
        3 => (
            prop::collection::btree_map(
                prop_oneof![
                    Just("org_id".to_owned()), Just("name".to_owned()), Just("slug".to_owned()),
                    Just("creator_user_id".to_owned()), Just("creator_email".to_owned()),
                    Just("creator_first_name".to_owned()), hostile_text()
                ],
                prop_oneof![json_value(), hostile_text().prop_map(Value::String)],
                0..8,
            )
        )
            .prop_map(|m| serde_json::to_vec(&m.into_iter().collect::<Map<_, _>>()).unwrap()),
    ];
    let mut runner = runner(cases("FUZZ_API_CASES", 2_000));
    runner
        .run(&api_body, |body| {
            match ingress::api::parse_request(&body) {
                Ok(request) => {
                    prop_assert!(onboarding::ClerkOrgId::parse(request.org_id.as_str()).is_ok());
                    let name = request.name.unwrap_or_default();
                    prop_assert!(!name.is_empty() && !name.chars().any(char::is_control));
                    prop_assert!(request.creator.user_id.is_some());
                }
                Err(fields) => {
                    prop_assert!(!fields.is_empty(), "a refusal names no field");
                    for f in &fields {
                        prop_assert!(!f.message.is_empty());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile_text(),
        "v1,[A-Za-z0-9+/=]{0,60}( v1,[A-Za-z0-9+/=]{0,60}){0,3}",
        "[0-9]{0,25}",
        "-?[0-9]{1,12}",
        "msg_[A-Za-z0-9]{0,40}",
    ]
}

#[test]
fn fuzz_the_signature_header_parser_and_verifier_never_panic_and_accept_only_true_signatures() {
    let secrets = WebhookSecrets::parse(&SECRET.to_owned().into()).unwrap();
    let now = 1_716_883_200_i64;
    let input = (
        prop::option::of(header_text()),
        prop::option::of(header_text()),
        prop::option::of(header_text()),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<usize>(),
    );
    let mut runner = runner(cases("FUZZ_SIGNATURE_CASES", 2_000));
    runner
        .run(
            &input,
            |(id, timestamp, signature, unbranded, body, flip)| {
                let mut map = HeaderMap::new();
                let names = if unbranded {
                    ["webhook-id", "webhook-timestamp", "webhook-signature"]
                } else {
                    ["svix-id", "svix-timestamp", "svix-signature"]
                };
                for (name, value) in names.into_iter().zip([&id, &timestamp, &signature]) {
                    if let Some(value) = value
                        && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
                    {
                        map.insert(name, value);
                    }
                }
                // Arbitrary headers: a defined error (a random signature never verifies).
                if let Ok(parsed) = SvixHeaders::read(&map) {
                    let verdict = secrets.verify(&map, &parsed, &body, now);
                    prop_assert!(verdict.is_err(), "a forged signature verified");
                }
                // A true signature over arbitrary bytes verifies; one flipped byte does not.
                let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
                let signed = ingress::send::sign(SECRET, id, now, &body);
                if let Ok(signed) = signed {
                    let mut map = HeaderMap::new();
                    map.insert("svix-id", HeaderValue::from_static(id));
                    map.insert(
                        "svix-timestamp",
                        HeaderValue::from_str(&now.to_string()).unwrap(),
                    );
                    map.insert("svix-signature", HeaderValue::from_str(&signed).unwrap());
                    let parsed = SvixHeaders::read(&map).unwrap();
                    prop_assert_eq!(secrets.verify(&map, &parsed, &body, now), Ok(()));
                    if !body.is_empty() {
                        let mut tampered = body.clone();
                        tampered[flip % body.len()] ^= 1;
                        prop_assert_eq!(
                            secrets.verify(&map, &parsed, &tampered, now),
                            Err(SignatureError::NoMatchingSignature)
                        );
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}
