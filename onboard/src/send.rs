//! `onboard send`: signs a Clerk event the way Svix does and POSTs it to the webhook — a file's
//! exact bytes, or an event of a §5 type made on the spot with fresh ids.

use std::path::Path;

use anyhow::{Context, bail};
use ingress::send::event::{self, EventSpec};

/// `onboard send <event.json | EVENT_TYPE> [flags]`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// A Clerk event type to make (e.g. `organization.created`; `--help` lists them all), or an
    /// event JSON file whose exact bytes are signed and sent.
    #[arg(value_name = "EVENT_TYPE | FILE")]
    event: String,
    /// The organization's Clerk id (default: a fresh `org_…`).
    #[arg(long)]
    org_id: Option<String>,
    /// The organization's slug (default: `acme-<random>`); magic suffixes such as
    /// `-fail-twilio` drive the sandbox.
    #[arg(long)]
    slug: Option<String>,
    /// The user's Clerk id: creator, member, invitee or session owner (default: a fresh `user_…`).
    #[arg(long)]
    user_id: Option<String>,
    /// The user's primary email (default: `<user id>@example.com`); `fail@…`/`flaky@…` drive
    /// the sandbox.
    #[arg(long)]
    email: Option<String>,
    /// First send the user's `user.created` (the creator of a new organization).
    #[arg(long)]
    with_creator: bool,
    /// The webhook URL.
    #[arg(long, default_value = ingress::send::DEFAULT_URL)]
    url: String,
    /// The signing secret (default: CLERK_WEBHOOK_SIGNING_SECRET's first secret, else the dev secret).
    #[arg(long)]
    secret: Option<String>,
    /// The `svix-id` of the (last) event (default: a fresh `msg_…`).
    #[arg(long)]
    id: Option<String>,
    /// The `svix-timestamp`, Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
}

/// Sends what `args` asks for, printing one line per delivery; any non-2xx answer is an error.
pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let secret = args.secret.clone().unwrap_or_else(|| {
        std::env::var("CLERK_WEBHOOK_SIGNING_SECRET")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| ingress::DEV_WEBHOOK_SECRET.to_owned())
    });
    let spec = EventSpec {
        org_id: args.org_id.clone(),
        slug: args.slug.clone(),
        user_id: args.user_id.clone(),
        email: args.email.clone(),
    };
    let made = event::is_event_type(&args.event);
    if !made {
        let chosen = spec.org_id.is_some()
            || spec.slug.is_some()
            || spec.user_id.is_some()
            || spec.email.is_some()
            || args.with_creator;
        if chosen {
            bail!(
                "--org-id, --slug, --user-id, --email and --with-creator apply to an event type \
                 ({}), not to a file",
                event::EVENT_TYPES.join(", ")
            );
        }
        let path = Path::new(&args.event);
        if !path.exists() {
            bail!(
                "{} is neither a file nor an event type ({})",
                args.event,
                event::EVENT_TYPES.join(", ")
            );
        }
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return deliver(&args, &secret, &args.event, &body, args.id.clone()).await;
    }

    let about = spec.resolve();
    if args.with_creator {
        let creator = event::build("user.created", &about)?;
        deliver(
            &args,
            &secret,
            &format!("user.created {} <{}>", about.user_id, about.email),
            creator.to_string().as_bytes(),
            None,
        )
        .await?;
    }
    let made = event::build(&args.event, &about)?;
    let label = match args.event.split('.').next() {
        Some("organization") => format!("{} {} ({})", args.event, about.org_id, about.slug),
        Some("organizationMembership" | "organizationInvitation") => format!(
            "{} {} in {} ({})",
            args.event, about.user_id, about.org_id, about.slug
        ),
        _ => format!("{} {} <{}>", args.event, about.user_id, about.email),
    };
    deliver(
        &args,
        &secret,
        &label,
        made.to_string().as_bytes(),
        args.id.clone(),
    )
    .await
}

async fn deliver(
    args: &SendArgs,
    secret: &str,
    label: &str,
    body: &[u8],
    id: Option<String>,
) -> anyhow::Result<()> {
    let (status, response) =
        ingress::send::send_event(&args.url, secret, body, id, args.timestamp).await?;
    println!("{status} {label} {response}");
    if status >= 300 {
        bail!("the webhook answered {status}");
    }
    Ok(())
}
