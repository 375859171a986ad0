-- The dashboard's search by text in the args of live jobs (`/jobs?q=`): trigrams of the args
-- as text, for waiting rows only. A job enters it when enqueued (and again when it waits for
-- a retry); the fetch's update to `running` and every finished row stay out of it. Running
-- jobs, few, are searched through `job_running_idx`.
create index job_waiting_args_trgm_idx on onboard.job using gin ((args::text) gin_trgm_ops)
    where state in ('available', 'scheduled', 'retryable');
