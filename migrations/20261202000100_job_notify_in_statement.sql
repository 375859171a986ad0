-- Enqueues wake the workers from their own statement (`pg_notify` in `jobs::enqueue`'s inserts
-- and the saga's), not through a trigger: the statement-level AFTER trigger with its transition
-- table cost 25–40 µs on every enqueueing statement, a third of a single enqueue's execution,
-- and every row the ingress inserted was copied into its transition table even with the NOTIFY
-- turned off. Inserts that do not notify (the ingress's, which wakes through its coalescer; a
-- raw insert) are found by the workers' next poll.
--
-- A rolling deploy is safe both ways: an older binary against this schema enqueues without a
-- wake-up (its jobs wait for the next poll, at most `poll_interval`), and a newer one against
-- the older schema notifies through the trigger as well (folded with its own for an enqueue; for
-- the ingress's inserts, one NOTIFY per commit) until `migrate` has run, which deploys run first.
drop trigger job_notify on onboard.job;
drop function onboard.job_notify();
