-- The LDAP groups each user was in at its last directory login (rewritten at every login).
CREATE TABLE user_group_members (
    user_id     BIGINT NOT NULL,
    group_id    BIGINT NOT NULL,
    PRIMARY KEY (user_id, group_id)
);
CREATE INDEX user_group_members_group ON user_group_members (group_id);
