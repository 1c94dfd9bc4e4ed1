-- The LDAP groups each user was in at its last directory login (rewritten at every login).
CREATE TABLE user_group_members (
    user_id     INTEGER NOT NULL,
    group_id    INTEGER NOT NULL,
    PRIMARY KEY (user_id, group_id)
);
CREATE INDEX user_group_members_group ON user_group_members (group_id);
