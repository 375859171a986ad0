//! `onboard operator …`: dashboard accounts and their API tokens.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;
use dashboard::account::{self, Role};

/// Dashboard operators.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Adds an operator; the password is prompted for (or read from stdin when it is not a terminal).
    Add {
        /// Login name.
        #[arg(long)]
        name: String,
        /// `viewer` (reads) or `operator` (reads and acts).
        #[arg(long)]
        role: String,
    },
    /// Removes an operator (its sessions and tokens end).
    Remove {
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Lists operators.
    List,
    /// Prints a new API token for the operator (shown once; only its hash is stored), or
    /// revokes all of its tokens with `--revoke`.
    Token {
        /// Login name.
        #[arg(long)]
        name: String,
        /// Revoke the operator's tokens instead.
        #[arg(long)]
        revoke: bool,
    },
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password (12+ characters): ")?;
        let second = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// Runs an `operator` subcommand.
pub async fn run(pool: &sqlx::PgPool, command: OperatorCommand) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Add { name, role } => {
            let role: Role = role.parse()?;
            let password = read_password()?;
            let id = account::add(pool, &name, role, &password).await?;
            println!("operator {id} `{name}` added ({})", role.as_str());
        }
        OperatorCommand::Remove { name } => {
            account::remove(pool, &name).await?;
            println!("operator `{name}` removed");
        }
        OperatorCommand::List => {
            for o in account::list(pool).await? {
                println!(
                    "{}\t{}\t{}\tcreated {}\t{} active token(s)",
                    o.id,
                    o.name,
                    o.role,
                    o.created_at.format("%Y-%m-%d %H:%M"),
                    o.tokens
                );
            }
        }
        OperatorCommand::Token { name, revoke: true } => {
            let n = account::revoke_tokens(pool, &name).await?;
            println!("revoked {n} token(s) of `{name}`");
        }
        OperatorCommand::Token {
            name,
            revoke: false,
        } => {
            let (id, token) = account::create_token(pool, &name).await?;
            println!("API token {id} for `{name}` (shown once, store it now):\n{token}");
        }
    }
    Ok(())
}

/// `onboard dev`'s operator: `dev` with a fresh password, printed with the URL.
pub async fn dev_operator(pool: &sqlx::PgPool) -> anyhow::Result<(String, String)> {
    let password = account::random_password();
    account::upsert(pool, "dev", Role::Operator, &password).await?;
    Ok(("dev".into(), password))
}
