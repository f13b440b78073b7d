-- Release 1 (stop 6, up to 0e35992): the schema its create_all made (users, groups, rules, audit; no
-- sign-in sessions, no unique lower(username) index, rule numbers without AUTOINCREMENT). For upgrade tests.
CREATE TABLE audit (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	cloud VARCHAR(64) NOT NULL, 
	server_id VARCHAR(64) NOT NULL, 
	server_name VARCHAR(255) NOT NULL, 
	detail VARCHAR(32) NOT NULL, 
	reason VARCHAR(500) NOT NULL, 
	client VARCHAR(64) NOT NULL, 
	user_agent VARCHAR(255) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_at ON audit (at);
CREATE INDEX ix_audit_username ON audit (username);
CREATE INDEX ix_audit_action ON audit (action);
CREATE INDEX ix_audit_server_id ON audit (server_id);
CREATE TABLE users (
	id INTEGER NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	session_token VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (username)
);
CREATE TABLE groups (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE group_members (
	group_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	PRIMARY KEY (group_id, user_id), 
	FOREIGN KEY(group_id) REFERENCES groups (id) ON DELETE CASCADE, 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE TABLE access_rules (
	id INTEGER NOT NULL, 
	user_id INTEGER, 
	group_id INTEGER, 
	cloud VARCHAR(64) NOT NULL, 
	name_pattern VARCHAR(255) NOT NULL, 
	meta_key VARCHAR(255) NOT NULL, 
	meta_value VARCHAR(255) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(group_id) REFERENCES groups (id) ON DELETE CASCADE
);
