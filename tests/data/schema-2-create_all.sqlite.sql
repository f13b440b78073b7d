-- Release 2 (stop 14, up to 26eee57): the schema its create_all made, before migrations. For upgrade tests.
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
CREATE UNIQUE INDEX ix_users_username_folded ON users (lower(username));
CREATE TABLE groups (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
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
CREATE INDEX ix_audit_action ON audit (action);
CREATE INDEX ix_audit_server_id ON audit (server_id);
CREATE INDEX ix_audit_at ON audit (at);
CREATE INDEX ix_audit_username ON audit (username);
CREATE TABLE group_members (
	group_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	PRIMARY KEY (group_id, user_id), 
	FOREIGN KEY(group_id) REFERENCES groups (id) ON DELETE CASCADE, 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE TABLE access_rules (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	user_id INTEGER, 
	group_id INTEGER, 
	cloud VARCHAR(64) NOT NULL, 
	name_pattern VARCHAR(255) NOT NULL, 
	meta_key VARCHAR(255) NOT NULL, 
	meta_value VARCHAR(255) NOT NULL, 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(group_id) REFERENCES groups (id) ON DELETE CASCADE
);
CREATE TABLE user_sessions (
	id VARCHAR(64) NOT NULL, 
	user_id INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_user_sessions_started_at ON user_sessions (started_at);
CREATE INDEX ix_user_sessions_user_id ON user_sessions (user_id);
