-- Schema 7 → 8: the web console's sessions. They live apart from API tokens so that the API,
-- which reads only `tokens`, can never accept a console cookie (a cross-site form or
-- sendBeacon carries the cookie, never an Authorization header). Only a hash of the cookie's
-- secret is stored, as for tokens.
CREATE TABLE console_sessions (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    session_hash    BLOB    NOT NULL UNIQUE CHECK (length(session_hash) = 32),
    created_at      TEXT    NOT NULL,
    expires_at      TEXT    NOT NULL,
    revoked_at      TEXT
) STRICT;
CREATE INDEX console_sessions_user ON console_sessions (user_id);
