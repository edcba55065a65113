-- itopctl state store, schema 6: what was done from the web board (`itopctl serve`): who (and how they were
-- known: a trusted proxy's header or a token), when, what (approve, reject), on which release and stage, why, from
-- where (the peer address, and the address the proxy forwarded for), and what came of it.
CREATE TABLE web_actions (
    id {{id}},
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    forwarded_for TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    release_id TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    result TEXT NOT NULL
);
