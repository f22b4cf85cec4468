-- A deleted account's mail is removed after its row (the "deleting" state).
-- Until that removal is done its tombstone refuses the address whatever its
-- age, and is not purged, so that a crash between the two steps can never
-- give the old mail to whoever registers the address next. Tombstones made
-- before this migration had their mail removed already.
ALTER TABLE tombstones ADD COLUMN mail_pending boolean NOT NULL DEFAULT false;
