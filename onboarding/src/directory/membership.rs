//! Memberships and invitations, one row per (organization, user) or per not-yet-accepted
//! invitation. Each row holds up to two parts, each last-writer-wins on its own clock:
//!
//! - the **membership part** (`organizationMembership.*`, the only writer of memberships),
//!   ordered by `(created_at, membership id, deleted, updated_at, role)`: a newer membership
//!   (the user removed and added again) supersedes an older one; within one membership a delete
//!   is final (Clerk's deleted payload keeps the last `updated_at`, which can be older than an
//!   update's); otherwise the newest `updated_at` wins, ties broken by the role text;
//! - the **invitation part** (`organizationInvitation.*`), ordered by
//!   `(terminal, updated_at, status, invitation id, role, email)`: accepted and revoked are
//!   final, pending < accepted < revoked at equal clocks.
//!
//! The row's `state`, `role` and `clerk_role` follow the membership part when there is one
//! (`active`, or `ended` once deleted), else the invitation (`pending`, `active` once accepted,
//! `revoked`); in a deleted organization a `pending` or `active` row is `ended`. An accepted
//! invitation carries the user id, so it joins the (organization, user) row of the membership
//! it became: whichever arrives first, both converge on one row.
//!
//! Every write holds the organization's row lock ([`lock_organization`]).

use std::cmp::Ordering;

use sqlx::{PgConnection, Row};

use super::organization::lock_organization;
use super::role::RoleMapping;

/// An `organizationMembership.*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipEvent {
    /// `org_…`.
    pub clerk_org_id: String,
    /// `user_…`.
    pub clerk_user_id: String,
    /// `orgmem_…`.
    pub clerk_membership_id: String,
    /// Clerk role (`org:admin`, …).
    pub clerk_role: String,
    /// The membership's `created_at`, Unix ms (0 when absent).
    pub created_at_ms: i64,
    /// The membership's `updated_at`, Unix ms.
    pub updated_at_ms: i64,
    /// True for `organizationMembership.deleted`.
    pub deleted: bool,
}

/// An invitation's status, from its event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvitationStatus {
    /// `organizationInvitation.created`.
    Pending,
    /// `organizationInvitation.accepted`.
    Accepted,
    /// `organizationInvitation.revoked`.
    Revoked,
}

impl InvitationStatus {
    /// The name stored in `membership.invitation_status`.
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationStatus::Pending => "pending",
            InvitationStatus::Accepted => "accepted",
            InvitationStatus::Revoked => "revoked",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(InvitationStatus::Pending),
            "accepted" => Some(InvitationStatus::Accepted),
            "revoked" => Some(InvitationStatus::Revoked),
            _ => None,
        }
    }

    /// Accepted and revoked invitations never change again.
    pub fn is_final(self) -> bool {
        self != InvitationStatus::Pending
    }
}

/// An `organizationInvitation.*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationEvent {
    /// `org_…`.
    pub clerk_org_id: String,
    /// `orginv_…`.
    pub clerk_invitation_id: String,
    /// The invited address.
    pub email: Option<String>,
    /// Clerk role offered.
    pub clerk_role: String,
    /// From the event type.
    pub status: InvitationStatus,
    /// The user who accepted (accepted invitations only).
    pub clerk_user_id: Option<String>,
    /// The invitation's `updated_at`, Unix ms.
    pub updated_at_ms: i64,
}

/// A membership row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MembershipState {
    /// Invited, not accepted.
    Pending,
    /// A member.
    Active,
    /// The invitation was revoked.
    Revoked,
    /// The membership was deleted, or its organization was.
    Ended,
}

impl MembershipState {
    /// The name stored in `membership.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipState::Pending => "pending",
            MembershipState::Active => "active",
            MembershipState::Revoked => "revoked",
            MembershipState::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MembershipPart {
    id: String,
    role: String,
    created_at: i64,
    updated_at: i64,
    deleted: bool,
}

impl MembershipPart {
    fn clock(&self) -> (i64, &str, bool, i64, &str) {
        (
            self.created_at,
            &self.id,
            self.deleted,
            self.updated_at,
            &self.role,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InvitationPart {
    id: String,
    status: InvitationStatus,
    role: String,
    updated_at: i64,
    email: Option<String>,
}

impl InvitationPart {
    fn clock(&self) -> (bool, i64, InvitationStatus, &str, &str, Option<&str>) {
        (
            self.status.is_final(),
            self.updated_at,
            self.status,
            &self.id,
            &self.role,
            self.email.as_deref(),
        )
    }
}

/// The newer of two parts by their clock (`a` on ties: they are equal).
fn newer<T: Clone>(a: Option<T>, b: Option<T>, cmp: impl Fn(&T, &T) -> Ordering) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if cmp(&b, &a) == Ordering::Greater {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

fn newer_membership(
    a: Option<MembershipPart>,
    b: Option<MembershipPart>,
) -> Option<MembershipPart> {
    newer(a, b, |x, y| x.clock().cmp(&y.clock()))
}

fn newer_invitation(
    a: Option<InvitationPart>,
    b: Option<InvitationPart>,
) -> Option<InvitationPart> {
    newer(a, b, |x, y| x.clock().cmp(&y.clock()))
}

/// A row as stored (or about to be).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    clerk_user_id: Option<String>,
    membership: Option<MembershipPart>,
    invitation: Option<InvitationPart>,
}

/// What a row shows: derived from its parts and whether its organization is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Derived {
    state: MembershipState,
    clerk_role: String,
    role: &'static str,
}

impl Entry {
    fn derive(&self, org_deleted: bool, roles: &RoleMapping) -> Derived {
        let (state, clerk_role) = match (&self.membership, &self.invitation) {
            (Some(m), _) => (
                if m.deleted {
                    MembershipState::Ended
                } else {
                    MembershipState::Active
                },
                m.role.as_str(),
            ),
            (None, Some(i)) => (
                match i.status {
                    InvitationStatus::Pending => MembershipState::Pending,
                    InvitationStatus::Accepted => MembershipState::Active,
                    InvitationStatus::Revoked => MembershipState::Revoked,
                },
                i.role.as_str(),
            ),
            // Excluded by the `membership_has_part` constraint; ended is the safe reading.
            (None, None) => (MembershipState::Ended, ""),
        };
        let state = match state {
            MembershipState::Pending | MembershipState::Active if org_deleted => {
                MembershipState::Ended
            }
            state => state,
        };
        Derived {
            state,
            clerk_role: clerk_role.to_owned(),
            role: roles.map(clerk_role).as_str(),
        }
    }
}

/// A stored row: its parts and the columns derived from them when it was written.
#[derive(Debug, Clone)]
struct Stored {
    id: i64,
    entry: Entry,
    state: String,
    role: String,
    clerk_role: String,
}

const COLUMNS: &str = "id, clerk_user_id, state, role, clerk_role, clerk_membership_id, membership_role,
    membership_created_at, clerk_updated_at, membership_deleted, clerk_invitation_id, invitation_status,
    invitation_role, invitation_updated_at, email";

fn stored_from_row(row: &sqlx::postgres::PgRow) -> Result<Stored, sqlx::Error> {
    let membership = match row.try_get::<Option<String>, _>("clerk_membership_id")? {
        Some(id) => Some(MembershipPart {
            id,
            role: row
                .try_get::<Option<String>, _>("membership_role")?
                .unwrap_or_default(),
            created_at: row
                .try_get::<Option<i64>, _>("membership_created_at")?
                .unwrap_or(0),
            updated_at: row
                .try_get::<Option<i64>, _>("clerk_updated_at")?
                .unwrap_or(0),
            deleted: row.try_get("membership_deleted")?,
        }),
        None => None,
    };
    let invitation = match row.try_get::<Option<String>, _>("clerk_invitation_id")? {
        Some(id) => {
            let status: Option<String> = row.try_get("invitation_status")?;
            Some(InvitationPart {
                id,
                status: status
                    .as_deref()
                    .and_then(InvitationStatus::parse)
                    .unwrap_or(InvitationStatus::Pending),
                role: row
                    .try_get::<Option<String>, _>("invitation_role")?
                    .unwrap_or_default(),
                updated_at: row
                    .try_get::<Option<i64>, _>("invitation_updated_at")?
                    .unwrap_or(0),
                email: row.try_get("email")?,
            })
        }
        None => None,
    };
    Ok(Stored {
        id: row.try_get("id")?,
        entry: Entry {
            clerk_user_id: row.try_get("clerk_user_id")?,
            membership,
            invitation,
        },
        state: row.try_get("state")?,
        role: row.try_get("role")?,
        clerk_role: row.try_get("clerk_role")?,
    })
}

async fn find_by_user(
    conn: &mut PgConnection,
    organization_id: i64,
    clerk_user_id: &str,
) -> Result<Option<Stored>, sqlx::Error> {
    let sql = format!(
        "select {COLUMNS} from onboard.membership where organization_id = $1 and clerk_user_id = $2 for update"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(organization_id)
        .bind(clerk_user_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(stored_from_row).transpose()
}

async fn find_by_invitation(
    conn: &mut PgConnection,
    clerk_invitation_id: &str,
) -> Result<Option<Stored>, sqlx::Error> {
    let sql = format!(
        "select {COLUMNS} from onboard.membership where clerk_invitation_id = $1 for update"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(clerk_invitation_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(stored_from_row).transpose()
}

const INSERT: &str = "
insert into onboard.membership
       (organization_id, clerk_user_id, email, role, clerk_role, state,
        clerk_membership_id, membership_role, membership_created_at, clerk_updated_at, membership_deleted,
        clerk_invitation_id, invitation_status, invitation_role, invitation_updated_at, ended_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
        case when $6 = 'ended' then now() end)";

const UPDATE: &str = "
update onboard.membership
   set clerk_user_id = $2, email = $3, role = $4, clerk_role = $5, state = $6,
       clerk_membership_id = $7, membership_role = $8, membership_created_at = $9,
       clerk_updated_at = $10, membership_deleted = $11,
       clerk_invitation_id = $12, invitation_status = $13, invitation_role = $14,
       invitation_updated_at = $15,
       ended_at = case when $6 = 'ended' then coalesce(ended_at, now()) end,
       updated_at = now()
 where id = $1";

/// Writes `entry` as a new row, or over `old` unless nothing stored would change.
async fn save(
    conn: &mut PgConnection,
    old: Option<&Stored>,
    organization_id: i64,
    entry: &Entry,
    org_deleted: bool,
    roles: &RoleMapping,
) -> Result<(), sqlx::Error> {
    let derived = entry.derive(org_deleted, roles);
    if let Some(old) = old {
        let unchanged = old.entry == *entry
            && old.state == derived.state.as_str()
            && old.role == derived.role
            && old.clerk_role == derived.clerk_role;
        if unchanged {
            return Ok(());
        }
    }
    let m = entry.membership.as_ref();
    let i = entry.invitation.as_ref();
    let query = match old {
        Some(old) => sqlx::query(UPDATE).bind(old.id),
        None => sqlx::query(INSERT).bind(organization_id),
    };
    query
        .bind(&entry.clerk_user_id)
        .bind(i.and_then(|i| i.email.as_deref()))
        .bind(derived.role)
        .bind(&derived.clerk_role)
        .bind(derived.state.as_str())
        .bind(m.map(|m| m.id.as_str()))
        .bind(m.map(|m| m.role.as_str()))
        .bind(m.map(|m| m.created_at))
        .bind(m.map(|m| m.updated_at))
        .bind(m.is_some_and(|m| m.deleted))
        .bind(i.map(|i| i.id.as_str()))
        .bind(i.map(|i| i.status.as_str()))
        .bind(i.map(|i| i.role.as_str()))
        .bind(i.map(|i| i.updated_at))
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies a membership event: upserts or ends the (organization, user) row's membership part,
/// last writer wins. The caller upserts the nested organization and public user data first.
pub async fn apply_membership(
    conn: &mut PgConnection,
    event: &MembershipEvent,
    roles: &RoleMapping,
) -> Result<(), sqlx::Error> {
    let org = lock_organization(conn, &event.clerk_org_id).await?;
    let old = find_by_user(conn, org.id, &event.clerk_user_id).await?;
    let incoming = MembershipPart {
        id: event.clerk_membership_id.clone(),
        role: event.clerk_role.clone(),
        created_at: event.created_at_ms,
        updated_at: event.updated_at_ms,
        deleted: event.deleted,
    };
    let entry = match &old {
        Some(stored) => Entry {
            membership: newer_membership(stored.entry.membership.clone(), Some(incoming)),
            ..stored.entry.clone()
        },
        None => Entry {
            clerk_user_id: Some(event.clerk_user_id.clone()),
            membership: Some(incoming),
            invitation: None,
        },
    };
    save(conn, old.as_ref(), org.id, &entry, org.deleted, roles).await
}

/// Applies an invitation event: upserts the invitation's row, last writer wins; an accepted
/// invitation joins (or becomes) the (organization, user) row. Returns the row's user id, if
/// it has one.
pub async fn apply_invitation(
    conn: &mut PgConnection,
    event: &InvitationEvent,
    roles: &RoleMapping,
) -> Result<Option<String>, sqlx::Error> {
    let org = lock_organization(conn, &event.clerk_org_id).await?;
    let incoming = InvitationPart {
        id: event.clerk_invitation_id.clone(),
        status: event.status,
        role: event.clerk_role.clone(),
        updated_at: event.updated_at_ms,
        email: event.email.clone(),
    };
    let by_invitation = find_by_invitation(conn, &event.clerk_invitation_id).await?;
    let by_user = match &event.clerk_user_id {
        Some(user) => find_by_user(conn, org.id, user).await?,
        None => None,
    };
    let (old, entry) = match (by_invitation, by_user) {
        (Some(inv), Some(user)) if inv.id != user.id => {
            // The invitation's own row meets the membership it became: fold it into the
            // (organization, user) row. Delete first: the invitation id is unique.
            sqlx::query("delete from onboard.membership where id = $1")
                .bind(inv.id)
                .execute(&mut *conn)
                .await?;
            let invitation = newer_invitation(
                newer_invitation(user.entry.invitation.clone(), inv.entry.invitation),
                Some(incoming),
            );
            let entry = Entry {
                invitation,
                ..user.entry.clone()
            };
            (Some(user), entry)
        }
        (Some(row), _) | (None, Some(row)) => {
            let entry = Entry {
                clerk_user_id: row
                    .entry
                    .clerk_user_id
                    .clone()
                    .or_else(|| event.clerk_user_id.clone()),
                invitation: newer_invitation(row.entry.invitation.clone(), Some(incoming)),
                membership: row.entry.membership.clone(),
            };
            (Some(row), entry)
        }
        (None, None) => {
            let entry = Entry {
                clerk_user_id: event.clerk_user_id.clone(),
                membership: None,
                invitation: Some(incoming),
            };
            (None, entry)
        }
    };
    let user = entry.clerk_user_id.clone();
    save(conn, old.as_ref(), org.id, &entry, org.deleted, roles).await?;
    Ok(user)
}

/// Ends every pending or active row of a deleted organization; returns how many.
pub async fn end_memberships(
    conn: &mut PgConnection,
    organization_id: i64,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        "update onboard.membership set state = 'ended', ended_at = coalesce(ended_at, now()), updated_at = now()
          where organization_id = $1 and state in ('pending', 'active')",
    )
    .bind(organization_id)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        created_at: i64,
        updated_at: i64,
        deleted: bool,
        role: &str,
    ) -> Option<MembershipPart> {
        Some(MembershipPart {
            id: "orgmem_1".into(),
            role: role.into(),
            created_at,
            updated_at,
            deleted,
        })
    }

    #[test]
    fn a_delete_is_final_within_one_membership_even_with_an_older_updated_at() {
        let updated = member(1, 9, false, "org:admin");
        let deleted = member(1, 1, true, "org:member");
        assert_eq!(newer_membership(updated.clone(), deleted.clone()), deleted);
        assert_eq!(newer_membership(deleted.clone(), updated), deleted);
    }

    #[test]
    fn a_newer_membership_supersedes_an_ended_one() {
        let ended = member(1, 5, true, "org:member");
        let mut again = member(7, 7, false, "org:admin");
        again.as_mut().unwrap().id = "orgmem_0".into();
        assert_eq!(newer_membership(ended.clone(), again.clone()), again);
        assert_eq!(newer_membership(again.clone(), ended), again);
    }

    #[test]
    fn an_accepted_invitation_is_never_pending_again() {
        let part = |status, updated_at| {
            Some(InvitationPart {
                id: "orginv_1".into(),
                status,
                role: "org:member".into(),
                updated_at,
                email: None,
            })
        };
        let accepted = part(InvitationStatus::Accepted, 1);
        assert_eq!(
            newer_invitation(accepted.clone(), part(InvitationStatus::Pending, 9)),
            accepted
        );
    }
}
