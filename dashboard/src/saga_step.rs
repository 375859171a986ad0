//! Saga awareness of single-job actions, in one place: a job whose `args.onboarding_id` is set
//! belongs to a saga, and acting on it must never strand that saga (DESIGN.md §6).
//!
//! - retry of a job of a terminal saga is refused (`409 saga_terminal`);
//! - cancel or discard of a job of a `running` saga cancels the saga (it compensates), and is
//!   refused past the point of no return (`409 saga_committed`), where the saga must finish;
//! - cancel or discard of a job of a `compensating` saga is refused (`409 saga_compensating`).

use sqlx::PgPool;

use crate::error::ApiError;

/// A job's saga, as far as an action on the job cares.
#[derive(Debug, Clone)]
pub struct StepSaga {
    /// The saga's id.
    pub id: i64,
    /// Its state.
    pub state: String,
    /// Step 3 is done: the saga no longer rolls back.
    pub committed: bool,
}

/// The saga of job `id`, if it is a saga's job.
pub async fn saga_of_job(pool: &PgPool, job_id: i64) -> Result<Option<StepSaga>, sqlx::Error> {
    let row: Option<(i64, String, bool)> = sqlx::query_as(
        "select s.id, s.state,
                exists (select 1 from onboard.onboarding_step st
                         where st.onboarding_id = s.id and st.name = $2 and st.state = 'done')
           from onboard.job j join onboard.onboarding s on s.id = (j.args->>'onboarding_id')::bigint
          where j.id = $1 and j.args ? 'onboarding_id'",
    )
    .bind(job_id)
    .bind(onboarding::saga::POINT_OF_NO_RETURN)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, state, committed)| StepSaga {
        id,
        state,
        committed,
    }))
}

/// Refuses a retry of a job of a terminal saga.
pub fn check_retry(saga: Option<&StepSaga>) -> Result<(), ApiError> {
    match saga {
        Some(s) if onboarding::saga::is_terminal(&s.state) => Err(ApiError::conflict(
            "saga_terminal",
            format!(
                "onboarding {} is {}: restart or retry the onboarding instead",
                s.id, s.state
            ),
        )),
        _ => Ok(()),
    }
}

/// What stopping (cancel/discard) a saga's job must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Not a saga's job, or its saga is terminal: act on the job alone.
    JobOnly,
    /// Cancel the saga after the job (it compensates).
    CancelSaga(i64),
}

/// Decides what stopping the job means for its saga, or refuses.
pub fn check_stop(saga: Option<&StepSaga>) -> Result<OnStop, ApiError> {
    let Some(s) = saga else {
        return Ok(OnStop::JobOnly);
    };
    match s.state.as_str() {
        "running" if s.committed => Err(ApiError::conflict(
            "saga_committed",
            format!(
                "onboarding {} is past its point of no return and must finish",
                s.id
            ),
        )),
        "running" => Ok(OnStop::CancelSaga(s.id)),
        "compensating" => Err(ApiError::conflict(
            "saga_compensating",
            format!(
                "onboarding {} is compensating: stopping its job would strand it",
                s.id
            ),
        )),
        _ => Ok(OnStop::JobOnly),
    }
}

/// Cancels saga `id` (it compensates), waiting for a step in flight to let go of its lock.
/// `interrupted` is the step whose running job was just cancelled: its attempt's transaction
/// rolled back, but its call to the provider may have had an effect, so the step is marked
/// started and its compensation (which checks the provider's real state) runs too.
pub async fn cancel_saga(
    pool: &PgPool,
    id: i64,
    interrupted: Option<&str>,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    let running = onboarding::saga::lock(&mut tx, id)
        .await?
        .is_some_and(|s| s.state == "running");
    if running && let Some(step) = interrupted {
        {
            let pending: bool = sqlx::query_scalar(
                "select exists (select 1 from onboard.onboarding_step
                                 where onboarding_id = $1 and name = $2 and state = 'pending')",
            )
            .bind(id)
            .bind(step)
            .fetch_one(&mut *tx)
            .await?;
            if pending {
                onboarding::saga::step_started(&mut tx, id, step).await?;
                onboarding::saga::step_attempt_failed(
                    &mut tx,
                    id,
                    step,
                    "cancelled by an operator while running",
                )
                .await?;
            }
        }
    }
    match onboarding::saga::cancel(&mut tx, id).await {
        Ok(true) => {
            tx.commit().await?;
            Ok(())
        }
        Ok(false) => Err(ApiError::conflict(
            "saga_committed",
            format!("onboarding {id} is past its point of no return and must finish"),
        )),
        Err(error) => Err(crate::action::saga_error(error)),
    }
}

/// Operator cancel of a whole saga: a step job in flight is cancelled first (its handler holds
/// the saga's lock for its whole call), then the saga compensates, that step included.
pub async fn cancel_running_saga(pool: &PgPool, id: i64) -> Result<(), ApiError> {
    let running: Option<(i64, String)> = sqlx::query_as(
        "select j.id, j.kind from onboard.job j join onboard.onboarding s on s.id = $1
          where j.args ? 'onboarding_id' and (j.args->>'onboarding_id')::bigint = $1
            and j.state = 'running' and s.state = 'running'
            and not exists (select 1 from onboard.onboarding_step st
                             where st.onboarding_id = s.id and st.name = $2 and st.state = 'done')
          order by j.id desc limit 1",
    )
    .bind(id)
    .bind(onboarding::saga::POINT_OF_NO_RETURN)
    .fetch_optional(pool)
    .await?;
    let mut interrupted = None;
    if let Some((job, kind)) = running
        && let Some(step) = step_of_kind(&kind)
        && matches!(
            jobs::admin::cancel(pool, job).await,
            Ok(jobs::JobState::Running)
        )
    {
        interrupted = Some(step);
    }
    cancel_saga(pool, id, interrupted).await
}

/// The saga step a job kind runs (`onboarding.<step>`), if it is one.
pub fn step_of_kind(kind: &str) -> Option<&'static str> {
    let step = kind.strip_prefix("onboarding.")?;
    onboarding::start::STEPS
        .iter()
        .copied()
        .find(|s| *s == step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(state: &str, committed: bool) -> StepSaga {
        StepSaga {
            id: 7,
            state: state.into(),
            committed,
        }
    }

    #[test]
    fn retry_is_refused_only_for_terminal_sagas() {
        assert!(check_retry(None).is_ok());
        assert!(check_retry(Some(&saga("running", false))).is_ok());
        for state in [
            "completed",
            "completed_with_errors",
            "compensated",
            "compensation_failed",
        ] {
            assert_eq!(
                check_retry(Some(&saga(state, false))).unwrap_err().code,
                "saga_terminal"
            );
        }
    }

    #[test]
    fn stopping_a_running_sagas_job_cancels_the_saga() {
        assert_eq!(check_stop(None).unwrap(), OnStop::JobOnly);
        assert_eq!(
            check_stop(Some(&saga("running", false))).unwrap(),
            OnStop::CancelSaga(7)
        );
        assert_eq!(
            check_stop(Some(&saga("running", true))).unwrap_err().code,
            "saga_committed"
        );
        assert_eq!(
            check_stop(Some(&saga("compensating", false)))
                .unwrap_err()
                .code,
            "saga_compensating"
        );
        assert_eq!(
            check_stop(Some(&saga("compensated", false))).unwrap(),
            OnStop::JobOnly
        );
    }

    #[test]
    fn only_step_kinds_name_a_step() {
        assert_eq!(
            step_of_kind("onboarding.twilio_subaccount"),
            Some("twilio_subaccount")
        );
        assert_eq!(step_of_kind("onboarding.undo_twilio_subaccount"), None);
        assert_eq!(step_of_kind("onboarding.sync_metadata"), None);
        assert_eq!(step_of_kind("clerk.user.created"), None);
    }
}
