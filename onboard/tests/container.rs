//! The container files, read as a container engine would and checked against the real CLI:
//! `docker-compose.yml` (services, health checks, commands, ports, depends_on, environment),
//! `compose.sandbox.env` and the `Dockerfile`'s stages. No engine runs here.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_norway::Value;

const ONBOARD: &str = env!("CARGO_BIN_EXE_onboard");

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn compose() -> Value {
    let mut value: Value = serde_norway::from_str(&repo_file("docker-compose.yml")).unwrap();
    value.apply_merge().unwrap();
    value
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Whether `onboard ARGS --help` parses: the subcommand and its flags exist.
fn cli_accepts(args: &[String]) -> bool {
    Command::new(ONBOARD)
        .args(args)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn env_of(service: &Value) -> &Value {
    &service["environment"]
}

#[test]
fn compose_services_run_real_subcommands_and_wait_on_healthy_dependencies() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "postgres",
            "migrate",
            "ingress",
            "worker",
            "dashboard",
            "sandbox"
        ])
    );

    for (name, service) in services {
        let name = name.as_str().unwrap();
        if name == "postgres" {
            continue;
        }
        let command = strings(&service["command"]);
        assert!(
            cli_accepts(&command),
            "{name}: `onboard {command:?}` is not a subcommand"
        );
        assert!(
            env_of(service)["DATABASE_URL"]
                .as_str()
                .is_some_and(|url| url.contains("@postgres:5432/")),
            "{name} reaches the postgres service"
        );
        for (dependency, condition) in service["depends_on"].as_mapping().unwrap() {
            let dependency = dependency.as_str().unwrap();
            assert!(
                names.contains(dependency),
                "{name} depends on unknown {dependency}"
            );
            let expected = match dependency {
                "postgres" => "service_healthy",
                "migrate" => "service_completed_successfully",
                other => panic!("{name} depends on {other}"),
            };
            assert_eq!(
                condition["condition"].as_str(),
                Some(expected),
                "{name} → {dependency}"
            );
        }
        if name == "migrate" {
            assert_eq!(command, ["migrate"]);
            assert_eq!(
                service["restart"].as_str(),
                Some("no"),
                "migrate is one-shot"
            );
            assert!(service["depends_on"]["postgres"].is_mapping());
            continue;
        }
        assert!(
            service["depends_on"]["migrate"].is_mapping(),
            "{name} waits for migrate"
        );
        let check = strings(&service["healthcheck"]["test"]);
        assert_eq!(
            check[..3],
            ["CMD", "/usr/local/bin/onboard", "healthcheck"],
            "{name}"
        );
        assert!(cli_accepts(&check[2..]), "{name}: {check:?}");
    }

    let postgres = &compose["services"]["postgres"];
    assert!(
        strings(&postgres["healthcheck"]["test"])
            .join(" ")
            .contains("pg_isready")
    );
    let volume = strings(&postgres["volumes"])[0].clone();
    let (named, mount) = volume.split_once(':').unwrap();
    assert_eq!(mount, "/var/lib/postgresql/data");
    assert!(compose["volumes"].as_mapping().unwrap().contains_key(named));

    let worker = &compose["services"]["worker"];
    assert_eq!(worker["deploy"]["replicas"].as_u64(), Some(2));
    assert!(worker["ports"].is_null(), "replicas publish no host port");
    for var in [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "RESEND_API_KEY",
        "CLERK_SECRET_KEY",
    ] {
        assert!(env_of(worker)[var].is_string(), "the worker gets {var}");
    }
    let ingress = &compose["services"]["ingress"];
    assert!(env_of(ingress)["CLERK_WEBHOOK_SIGNING_SECRET"].is_string());
    let sandbox = &compose["services"]["sandbox"];
    assert_eq!(strings(&sandbox["profiles"]), ["sandbox"]);
    assert!(compose["services"]["dashboard"]["profiles"].is_null());

    // Each published port reaches the address its role listens on.
    for (service, var) in [
        ("ingress", "ONBOARD_INGRESS_ADDR"),
        ("dashboard", "ONBOARD_DASHBOARD_ADDR"),
        ("sandbox", "ONBOARD_SANDBOX_ADDR"),
    ] {
        let service = &compose["services"][service];
        let listen = env_of(service)[var].as_str().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{var} listens beyond loopback"
        );
        let port = listen.rsplit(':').next().unwrap();
        let published = strings(&service["ports"])[0].clone();
        assert!(
            published.ends_with(&format!(":{port}")),
            "{published} → {listen}"
        );
    }
}

#[test]
fn sandbox_env_file_points_every_provider_at_the_sandbox_service() {
    let compose = compose();
    let listen = env_of(&compose["services"]["sandbox"])["ONBOARD_SANDBOX_ADDR"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("http://sandbox:{}", listen.rsplit(':').next().unwrap());
    let file = repo_file("compose.sandbox.env");
    let vars: std::collections::BTreeMap<&str, &str> = file
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split_once('='))
        .collect();
    for var in ["TWILIO_BASE_URL", "RESEND_BASE_URL", "CLERK_API_BASE_URL"] {
        assert_eq!(vars.get(var), Some(&base.as_str()), "{var}");
    }
    assert_eq!(
        vars["TWILIO_ACCOUNT_SID"],
        sandbox::SandboxConfig::DEV_TWILIO_ACCOUNT_SID
    );
    assert!(vars["CLERK_WEBHOOK_SIGNING_SECRET"].starts_with("whsec_"));
}

#[test]
fn dockerfile_caches_dependencies_and_runs_unprivileged_with_a_health_check() {
    let text = repo_file("Dockerfile");
    // Stages: (name, instructions), joining continuation lines.
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head);
            continue;
        }
        logical.push_str(line);
        let instruction = std::mem::take(&mut logical);
        let words: Vec<&str> = instruction.split_whitespace().collect();
        if words[0] == "FROM" {
            let name = match words.as_slice() {
                [_, _, as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            stages.push((name, words[1].to_owned(), Vec::new()));
        } else if let Some((_, _, body)) = stages.last_mut() {
            body.push(instruction);
        }
    }
    assert!(stages.len() >= 2, "multi-stage");
    let (_, _, builder) = stages
        .iter()
        .find(|(name, _, _)| name == "builder")
        .expect("a builder stage");
    let cook = builder.iter().position(|i| i.contains("cargo chef cook"));
    let sources = builder.iter().position(|i| i == "COPY . .");
    assert!(
        matches!((cook, sources), (Some(cook), Some(sources)) if cook < sources),
        "dependencies are built before the sources are copied"
    );
    let (_, base, runtime) = stages.last().unwrap();
    assert!(
        !base.starts_with("rust:"),
        "the runtime image is not the toolchain"
    );
    let find = |keyword: &str| runtime.iter().find(|i| i.starts_with(keyword)).cloned();
    let user = find("USER ").expect("USER");
    assert!(!user.contains("root") || user.contains("nonroot"), "{user}");
    assert!(find("COPY --from=builder").is_some());
    let health = find("HEALTHCHECK").expect("HEALTHCHECK");
    assert!(health.contains(r#"CMD ["/usr/local/bin/onboard", "healthcheck"]"#));
    assert!(
        find("ENTRYPOINT")
            .unwrap()
            .contains("/usr/local/bin/onboard")
    );
    let command: Vec<String> =
        serde_json::from_str(find("CMD ").unwrap().trim_start_matches("CMD ")).unwrap();
    assert!(cli_accepts(&command));
}

#[test]
fn healthcheck_passes_against_a_live_healthz_and_fails_against_a_closed_port() {
    // `onboard sandbox` on a free port, with credentials from the environment.
    let mut sandbox = Command::new(ONBOARD)
        .arg("sandbox")
        .env("ONBOARD_SANDBOX_ADDR", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
        .env("TWILIO_AUTH_TOKEN", "token-that-must-not-be-printed")
        .env_remove("RESEND_API_KEY")
        .env_remove("CLERK_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    for line in BufReader::new(sandbox.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("point the worker here");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    let base = text
        .split_whitespace()
        .find(|word| word.starts_with("http://127.0.0.1:"))
        .unwrap()
        .to_owned();
    let probe = |url: &str| {
        Command::new(ONBOARD)
            .args(["healthcheck", "--url", url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let live = probe(&format!("{base}/healthz"));
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    assert!(live, "healthcheck against {base}/healthz");
    assert!(!probe(&format!("{base}/healthz")), "the sandbox is gone");

    assert!(
        text.contains("AC0123456789abcdef0123456789abcdef"),
        "{text}"
    );
    assert!(text.contains("the one in TWILIO_AUTH_TOKEN"), "{text}");
    assert!(!text.contains("token-that-must-not-be-printed"), "{text}");
    assert!(
        text.contains("re_sandbox") && text.contains("sk_test_sandbox"),
        "{text}"
    );
}
