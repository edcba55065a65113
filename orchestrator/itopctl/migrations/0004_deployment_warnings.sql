-- itopctl state store, schema 4: what went wrong around a deployment without failing it (a JSON list of strings),
-- e.g. a Sentry outage that kept its release and deploy markers from being recorded. The deployment's result does
-- not change for a warning; `itopctl history` and `status` show them.
ALTER TABLE deployments ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
