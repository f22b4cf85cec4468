-- Server-wide switches that every daemon on every node follows, changed by
-- chatmail-admin and announced on the channel chatmail_settings_changed.
-- No-Log starts on: a new install logs nothing about users until the admin
-- says otherwise.
CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO settings (key, value) VALUES ('nolog', 'on');
