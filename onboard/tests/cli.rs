//! The `onboard` binary's configuration: every variable is also a flag and the flag wins;
//! a bad value stops the start with an error naming its variable.

use std::process::{Command, Output};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `onboard ingress` with `args`, the signing secret and `env`, and no database configured.
fn ingress(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onboard"));
    command
        .arg("ingress")
        .args(args)
        .env_remove("DATABASE_URL")
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run onboard")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_variable_stops_the_start_with_an_error_naming_it() {
    let output = ingress(&[], &[("ONBOARD_INGRESS_BODY_LIMIT", "0")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("ONBOARD_INGRESS_BODY_LIMIT"),
        "{}",
        stderr(&output)
    );
    let output = ingress(&[], &[("ONBOARD_INGRESS_ADDR", "nope")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("ONBOARD_INGRESS_ADDR"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_flag_wins_over_its_variable() {
    // The flag's valid value replaces the variable's invalid one, so the start gets as far as
    // the next missing setting: the database.
    let output = ingress(
        &["--body-limit", "1024", "--ingress-addr", "127.0.0.1:0"],
        &[
            ("ONBOARD_INGRESS_BODY_LIMIT", "0"),
            ("ONBOARD_INGRESS_ADDR", "nope"),
        ],
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("DATABASE_URL is not set"), "{text}");
    assert!(!text.contains("ONBOARD_INGRESS"), "{text}");
}

#[test]
fn every_role_documents_its_flags_and_variables() {
    for role in ["serve", "ingress", "worker", "migrate", "sandbox"] {
        let output = Command::new(env!("CARGO_BIN_EXE_onboard"))
            .args([role, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{role}: {}", stderr(&output));
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("[env: "), "{role}: {help}");
    }
}

#[test]
fn secrets_are_not_shown_by_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args(["serve", "--help"])
        .env("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
        .env("TWILIO_AUTH_TOKEN", "twilio-token-secret")
        .env("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("CLERK_WEBHOOK_SIGNING_SECRET"), "{help}");
    for secret in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "twilio-token-secret",
        "hunter2",
    ] {
        assert!(!help.contains(secret), "{help}");
    }
}
