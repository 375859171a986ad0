-- How many times Svix delivered an inbox row's `svix-id` again after the first delivery
-- (counted on the duplicate path only; the dashboard shows it).
alter table onboard.inbox add column duplicates integer not null default 0;
