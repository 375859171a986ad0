-- The saga's run: 1 when it starts, one more at each operator restart or retry. Its step and
-- compensation jobs carry the run they belong to; a job of an earlier run changes nothing.
alter table onboard.onboarding add column run integer not null default 1;

-- The reconciler's scan: sagas that are not terminal.
create index onboarding_unsettled_idx on onboard.onboarding (id)
    where state in ('running', 'compensating');
