-- The fetch claims `available` rows only, in fetch order. Waiting rows (`scheduled`,
-- `retryable`) are made `available` by the fetch when due, through `job_waiting_idx`'s range
-- on `run_at`, so a large backlog of future jobs is never walked by a fetch.
create index job_available_idx on onboard.job (queue, priority, run_at, id)
    where state = 'available';
drop index onboard.job_fetch_idx;
