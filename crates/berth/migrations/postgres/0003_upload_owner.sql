-- An upload session belongs to the identity that started it: only it may continue, finish,
-- inspect or cancel the session. '' is the anonymous client (or a registry without
-- authentication); sessions started before this column existed are anonymous.
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
