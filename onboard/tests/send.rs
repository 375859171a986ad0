//! `onboard send` as a user runs it: made events and files, signed as Svix does, POSTed to a
//! webhook (here a minimal HTTP server that records what it receives).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

use serde_json::Value;

const ONBOARD: &str = env!("CARGO_BIN_EXE_onboard");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One received request: its headers (lower-case names) and body.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Serves requests with `status` on a free port; returns the URL and the recordings.
fn webhook(status: u16) -> (String, Recordings) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhooks/clerk", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
                }
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            if tx.send(Received { headers, body }).is_err() {
                break;
            }
        }
    });
    (url, Recordings(rx))
}

/// What the webhook received.
struct Recordings(std::sync::mpsc::Receiver<Received>);

impl Recordings {
    /// Exactly `count` requests (none more within a short wait).
    fn take(&self, count: usize) -> Vec<Received> {
        let wait = std::time::Duration::from_secs(10);
        let received: Vec<Received> = (0..count)
            .map(|n| {
                self.0
                    .recv_timeout(wait)
                    .unwrap_or_else(|_| panic!("request {} of {count}", n + 1))
            })
            .collect();
        assert!(
            self.0
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "more than {count} requests"
        );
        received
    }
}

fn send(args: &[&str], url: &str) -> std::process::Output {
    Command::new(ONBOARD)
        .arg("send")
        .args(args)
        .args(["--url", url, "--secret", SECRET])
        .env_remove("CLERK_WEBHOOK_SIGNING_SECRET")
        .output()
        .unwrap()
}

fn assert_signed(request: &Received) {
    let id = request.header("svix-id");
    let timestamp: i64 = request.header("svix-timestamp").parse().unwrap();
    let expected = ingress::send::sign(SECRET, id, timestamp, &request.body).unwrap();
    assert!(id.starts_with("msg_"));
    assert_eq!(request.header("svix-signature"), expected);
}

#[test]
fn with_creator_sends_the_creators_user_created_then_the_chosen_organization() {
    let (url, server) = webhook(204);
    let output = send(
        &[
            "organization.created",
            "--with-creator",
            "--slug",
            "acme-fail-twilio",
            "--email",
            "fail@example.com",
            "--user-id",
            "user_creator1",
        ],
        &url,
    );
    assert!(output.status.success(), "{output:?}");
    let received = server.take(2);
    let (user, org) = (received[0].json(), received[1].json());
    assert_eq!(user["type"], "user.created");
    assert_eq!(user["data"]["id"], "user_creator1");
    assert_eq!(
        user["data"]["email_addresses"][0]["email_address"],
        "fail@example.com"
    );
    assert_eq!(org["type"], "organization.created");
    assert_eq!(org["data"]["slug"], "acme-fail-twilio");
    assert_eq!(org["data"]["created_by"], "user_creator1");
    assert!(org["data"]["id"].as_str().unwrap().starts_with("org_"));
    received.iter().for_each(assert_signed);
    assert_ne!(received[0].header("svix-id"), received[1].header("svix-id"));
}

#[test]
fn a_file_is_sent_byte_for_byte_and_a_refusal_fails_the_command() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/clerk/organization.created.json"
    );
    let (url, server) = webhook(401);
    let output = send(&[path, "--id", "msg_fixed"], &url);
    assert!(!output.status.success(), "a 401 fails the command");
    let received = server.take(1);
    assert_eq!(received[0].body, std::fs::read(path).unwrap());
    assert_eq!(received[0].header("svix-id"), "msg_fixed");
    assert_signed(&received[0]);

    let refused = send(&[path, "--slug", "x"], &url);
    assert!(
        !refused.status.success(),
        "type flags are refused with a file"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("apply to an event type"));
    let unknown = send(&["session.ended"], &url);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("neither a file nor an event type"));
    server.take(0);
}
