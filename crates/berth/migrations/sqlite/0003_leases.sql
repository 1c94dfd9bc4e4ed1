-- Leases: which instance does a job that must run once (delivering an endpoint's events, purging
-- uploads, importing a Distribution root). A lease is held until expires_at (Unix milliseconds)
-- unless renewed; token grows with every taking, so work done under an older token can be fenced.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    token       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
