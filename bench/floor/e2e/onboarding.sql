-- The raw-SQL floor of one onboarding (`bench e2e`, on schema.sql): every row one onboarding
-- writes, in the fewest statements and commits its semantics allow, with no HTTP on either side
-- and no provider calls. One pgbench transaction is one onboarding:
--   the two deliveries (user.created, organization.created), each its inbox row and job in
--   one statement; each of the five jobs claimed (one statement) and then handled;
--   user.created: the user's row, job completed (one statement);
--   organization.created: organization, saga, its four steps, the 45 default grants, the
--   Twilio step's job, job completed (one statement: the two local steps run with it);
--   Twilio and the welcome email: one transaction each holding the saga's row lock across the
--   (absent) provider call (BEGIN, lock, record the step and enqueue the next job, COMMIT);
--   the Clerk metadata job: the organization's status, job completed (one statement).
-- 18 statements and 12 commits per onboarding. A claim here names its job by id, so it skips
-- the queue's index search a real claim does: the floor is generous. (A space follows each colon
-- of the payloads: pgbench reads `:name` as a variable.)
\set n random(1, 9000000000000000000)
WITH i AS (
  INSERT INTO inbox (svix_id, event_type, payload)
  VALUES ('msg_u' || :n, 'user.created',
          jsonb_set(jsonb_set('{"event_attributes": {"http_request": {"client_ip": "192.168.1.100","user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"}},"object": "event","type": "user.created","instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S","timestamp": 1716883200,"data": {"object": "user","id": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S","external_id": null,"primary_email_address_id": "idn_2g7np7Hrk0SN6kj5EDMLDaKNL0S","primary_phone_number_id": null,"primary_web3_wallet_id": null,"username": null,"first_name": "John","last_name": "Doe","profile_image_url": "https://img.clerk.com/xxxxxx","image_url": "https://img.clerk.com/xxxxxx","has_image": true,"public_metadata": {},"private_metadata": null,"unsafe_metadata": {},"email_addresses": [],"phone_numbers": [],"web3_wallets": [],"passkeys": [],"password_enabled": true,"two_factor_enabled": false,"totp_enabled": false,"backup_code_enabled": false,"mfa_enabled_at": null,"mfa_disabled_at": null,"external_accounts": [],"saml_accounts": [],"enterprise_accounts": [],"last_sign_in_at": 1716883200000,"banned": false,"locked": false,"lockout_expires_in_seconds": null,"verification_attempts_remaining": null,"updated_at": 1716883200000,"created_at": 1716883200000,"delete_self_enabled": true,"create_organization_enabled": true,"create_organizations_limit": null,"last_active_at": 1716883200000,"legal_accepted_at": 1716883200000}}'::jsonb, '{data,id}', to_jsonb('user_' || :n)),
                    '{data,email_addresses}',
                    jsonb_build_array(jsonb_build_object('id', 'idn_' || :n, 'email_address', 'user' || :n || '@example.com'))))
  RETURNING id
)
INSERT INTO jobs (kind, args) SELECT 'clerk.user.created', jsonb_build_object('inbox_id', id) FROM i
RETURNING id AS uj \gset
WITH i AS (
  INSERT INTO inbox (svix_id, event_type, payload)
  VALUES ('msg_o' || :n, 'organization.created',
          jsonb_set(jsonb_set('{"event_attributes": {"http_request": {"client_ip": "192.168.1.100","user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"}},"object": "event","type": "organization.created","instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S","timestamp": 1716883200,"data": {"object": "organization","id": "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S","name": "Acme Corp","slug": "acme-corp","image_url": "https://img.clerk.com/xxxxxx","has_image": true,"members_count": 1,"missing_member_with_elevated_permissions": false,"pending_invitations_count": 0,"max_allowed_memberships": 5,"admin_delete_enabled": true,"public_metadata": {},"private_metadata": {},"created_by": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S","created_at": 1716883200000,"updated_at": 1716883200000}}'::jsonb, '{data,id}', to_jsonb('org_' || :n)),
                    '{data,created_by}', to_jsonb('user_' || :n)))
  RETURNING id
)
INSERT INTO jobs (kind, args) SELECT 'clerk.organization.created', jsonb_build_object('inbox_id', id) FROM i
RETURNING id AS oj \gset
UPDATE jobs SET state = 'running', attempt = attempt + 1 WHERE id = :uj AND state = 'available';
WITH p AS (
  SELECT i.payload FROM inbox i WHERE i.id = (SELECT (args->>'inbox_id')::bigint FROM jobs WHERE id = :uj)
), u AS (
  INSERT INTO app_user (clerk_user_id, email, first_name, last_name)
  SELECT payload#>>'{data,id}', payload#>>'{data,email_addresses,0,email_address}',
         payload#>>'{data,first_name}', payload#>>'{data,last_name}' FROM p
  ON CONFLICT (clerk_user_id) DO NOTHING
)
UPDATE jobs SET state = 'completed', finalized_at = now() WHERE id = :uj AND state = 'running';
UPDATE jobs SET state = 'running', attempt = attempt + 1 WHERE id = :oj AND state = 'available';
WITH p AS (
  SELECT i.payload FROM inbox i WHERE i.id = (SELECT (args->>'inbox_id')::bigint FROM jobs WHERE id = :oj)
), org AS (
  INSERT INTO organization (clerk_org_id, name, slug, created_by, status)
  SELECT payload#>>'{data,id}', payload#>>'{data,name}', payload#>>'{data,slug}',
         payload#>>'{data,created_by}', 'running' FROM p
  RETURNING id, clerk_org_id
), saga AS (
  INSERT INTO onboarding (clerk_org_id, request) SELECT org.clerk_org_id, p.payload->'data' FROM org, p
  RETURNING id
), steps AS (
  INSERT INTO onboarding_step (onboarding_id, name, state, output)
  SELECT saga.id, s.name, s.state, s.output::jsonb FROM saga,
    (VALUES ('create_org_record', 'completed', '{}'), ('default_permissions', 'completed', '{"grants": 45}'),
            ('twilio_subaccount', 'running', NULL), ('welcome_email', 'pending', NULL)) s(name, state, output)
), grants AS (
  INSERT INTO role_permission (organization_id, role, permission)
  SELECT org.id, g.role, g.permission FROM org, default_grant g
  ON CONFLICT DO NOTHING
), next AS (
  INSERT INTO jobs (kind, args) SELECT 'onboarding.twilio_subaccount', jsonb_build_object('onboarding_id', id) FROM saga
  RETURNING id
), done AS (
  UPDATE jobs SET state = 'completed', finalized_at = now() WHERE id = :oj AND state = 'running'
)
SELECT (SELECT id FROM saga) AS saga, (SELECT id FROM next) AS tj \gset
UPDATE jobs SET state = 'running', attempt = attempt + 1 WHERE id = :tj AND state = 'available';
BEGIN;
SELECT state FROM onboarding WHERE id = :saga FOR UPDATE;
WITH org AS (
  UPDATE organization SET twilio_sid = 'AC' || md5(:n::text), updated_at = now()
   WHERE clerk_org_id = 'org_' || :n
), step AS (
  UPDATE onboarding_step SET state = 'completed', output = jsonb_build_object('sid', 'AC' || md5(:n::text)), updated_at = now()
   WHERE onboarding_id = :saga AND name = 'twilio_subaccount'
), after AS (
  UPDATE onboarding_step SET state = 'running', updated_at = now()
   WHERE onboarding_id = :saga AND name = 'welcome_email'
), next AS (
  INSERT INTO jobs (kind, args) VALUES ('onboarding.welcome_email', jsonb_build_object('onboarding_id', :saga::bigint))
  RETURNING id
), done AS (
  UPDATE jobs SET state = 'completed', finalized_at = now() WHERE id = :tj AND state = 'running'
)
SELECT id AS ej FROM next \gset
COMMIT;
UPDATE jobs SET state = 'running', attempt = attempt + 1 WHERE id = :ej AND state = 'available';
BEGIN;
SELECT o.state, u.email FROM onboarding o LEFT JOIN app_user u ON u.clerk_user_id = o.request->>'created_by'
 WHERE o.id = :saga FOR UPDATE OF o;
WITH step AS (
  UPDATE onboarding_step SET state = 'completed', output = '{"email_id": "re_1"}', updated_at = now()
   WHERE onboarding_id = :saga AND name = 'welcome_email'
), saga AS (
  UPDATE onboarding SET state = 'completed', updated_at = now() WHERE id = :saga
), next AS (
  INSERT INTO jobs (kind, args) VALUES ('onboarding.sync_metadata', jsonb_build_object('onboarding_id', :saga::bigint))
  RETURNING id
), done AS (
  UPDATE jobs SET state = 'completed', finalized_at = now() WHERE id = :ej AND state = 'running'
)
SELECT id AS sj FROM next \gset
COMMIT;
UPDATE jobs SET state = 'running', attempt = attempt + 1 WHERE id = :sj AND state = 'available';
WITH org AS (
  UPDATE organization SET status = 'completed', updated_at = now() WHERE clerk_org_id = 'org_' || :n
)
UPDATE jobs SET state = 'completed', finalized_at = now() WHERE id = :sj AND state = 'running';
