-- Release 6 (stop 27, up to dc532a6): the schema its migrations made, at 0009. For upgrade tests.
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE users (
	id INTEGER NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	session_token VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, source VARCHAR(16) DEFAULT 'local' NOT NULL, external_id VARCHAR(512), last_sign_in_at DATETIME, 
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
	meta_value VARCHAR(255) NOT NULL, power BOOLEAN DEFAULT 0 NOT NULL, 
	FOREIGN KEY(group_id) REFERENCES groups (id) ON DELETE CASCADE, 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE TABLE user_sessions (
	id VARCHAR(64) NOT NULL, 
	user_id INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, method VARCHAR(16) DEFAULT 'local' NOT NULL, external_sid VARCHAR(255), seen_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_user_sessions_started_at ON user_sessions (started_at);
CREATE INDEX ix_user_sessions_user_id ON user_sessions (user_id);
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
	user_agent VARCHAR(255) NOT NULL, request_id VARCHAR(64) DEFAULT '' NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_action ON audit (action);
CREATE INDEX ix_audit_at ON audit (at);
CREATE INDEX ix_audit_server_id ON audit (server_id);
CREATE INDEX ix_audit_username ON audit (username);
CREATE UNIQUE INDEX ix_users_external ON users (source, external_id);
CREATE INDEX ix_user_sessions_external_sid ON user_sessions (external_sid);
CREATE TABLE live_consoles (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	session_id VARCHAR(64) NOT NULL, 
	server_id VARCHAR(64) NOT NULL, 
	server_name VARCHAR(255) NOT NULL, 
	cloud VARCHAR(64) NOT NULL, 
	client VARCHAR(64) NOT NULL, 
	instance VARCHAR(128) NOT NULL, 
	started_at DATETIME NOT NULL, 
	seen_at DATETIME NOT NULL, 
	to_cloud BIGINT NOT NULL, 
	to_browser BIGINT NOT NULL, 
	end_requested_by VARCHAR(64), kind VARCHAR(16) DEFAULT 'novnc' NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_live_consoles_user_id ON live_consoles (user_id);
CREATE INDEX ix_live_consoles_session_id ON live_consoles (session_id);
CREATE INDEX ix_live_consoles_instance ON live_consoles (instance);
CREATE INDEX ix_live_consoles_seen_at ON live_consoles (seen_at);
CREATE TABLE pins (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	cloud VARCHAR(64) NOT NULL, 
	server_id VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_pins_user_server UNIQUE (user_id, cloud, server_id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_pins_user_id ON pins (user_id);
CREATE TABLE instances (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	key_fingerprint VARCHAR(64) NOT NULL, 
	fallback_fingerprints TEXT NOT NULL, 
	clouds TEXT NOT NULL, 
	console_mode TEXT NOT NULL, 
	started_at DATETIME NOT NULL, 
	seen_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_instances_seen_at ON instances (seen_at);
CREATE TABLE single_use_tokens (
	digest VARCHAR(64) NOT NULL, 
	purpose VARCHAR(16) NOT NULL, 
	user_id INTEGER NOT NULL, 
	session_id VARCHAR(64) NOT NULL, 
	server_id VARCHAR(64) NOT NULL, 
	server_name VARCHAR(255) NOT NULL, 
	cloud VARCHAR(64) NOT NULL, 
	scope VARCHAR(255) NOT NULL, 
	expires_at DATETIME NOT NULL, 
	used_at DATETIME, 
	PRIMARY KEY (digest), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_single_use_tokens_user_id ON single_use_tokens (user_id);
CREATE INDEX ix_single_use_tokens_expires_at ON single_use_tokens (expires_at);
INSERT INTO alembic_version (version_num) VALUES ('0009');
