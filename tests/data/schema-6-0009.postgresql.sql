-- Release 6 (stop 27, up to dc532a6): the schema its migrations made, at 0009. For upgrade tests.
CREATE TABLE public.access_rules (
    id integer NOT NULL,
    user_id integer,
    group_id integer,
    cloud character varying(64) NOT NULL,
    name_pattern character varying(255) NOT NULL,
    meta_key character varying(255) NOT NULL,
    meta_value character varying(255) NOT NULL,
    power boolean DEFAULT false NOT NULL
);
CREATE SEQUENCE public.access_rules_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.access_rules_id_seq OWNED BY public.access_rules.id;
CREATE TABLE public.alembic_version (
    version_num character varying(32) NOT NULL
);
CREATE TABLE public.audit (
    id integer NOT NULL,
    at timestamp without time zone NOT NULL,
    username character varying(64) NOT NULL,
    action character varying(32) NOT NULL,
    outcome character varying(16) NOT NULL,
    cloud character varying(64) NOT NULL,
    server_id character varying(64) NOT NULL,
    server_name character varying(255) NOT NULL,
    detail character varying(32) NOT NULL,
    reason character varying(500) NOT NULL,
    client character varying(64) NOT NULL,
    user_agent character varying(255) NOT NULL,
    request_id character varying(64) DEFAULT ''::character varying NOT NULL
);
CREATE SEQUENCE public.audit_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.audit_id_seq OWNED BY public.audit.id;
CREATE TABLE public.group_members (
    group_id integer NOT NULL,
    user_id integer NOT NULL
);
CREATE TABLE public.groups (
    id integer NOT NULL,
    name character varying(64) NOT NULL
);
CREATE SEQUENCE public.groups_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.groups_id_seq OWNED BY public.groups.id;
CREATE TABLE public.instances (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    role character varying(16) NOT NULL,
    version character varying(64) NOT NULL,
    key_fingerprint character varying(64) NOT NULL,
    fallback_fingerprints text NOT NULL,
    clouds text NOT NULL,
    console_mode text NOT NULL,
    started_at timestamp without time zone NOT NULL,
    seen_at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.instances_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.instances_id_seq OWNED BY public.instances.id;
CREATE TABLE public.live_consoles (
    id integer NOT NULL,
    user_id integer NOT NULL,
    username character varying(64) NOT NULL,
    session_id character varying(64) NOT NULL,
    server_id character varying(64) NOT NULL,
    server_name character varying(255) NOT NULL,
    cloud character varying(64) NOT NULL,
    client character varying(64) NOT NULL,
    instance character varying(128) NOT NULL,
    started_at timestamp without time zone NOT NULL,
    seen_at timestamp without time zone NOT NULL,
    to_cloud bigint NOT NULL,
    to_browser bigint NOT NULL,
    end_requested_by character varying(64),
    kind character varying(16) DEFAULT 'novnc'::character varying NOT NULL
);
CREATE SEQUENCE public.live_consoles_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.live_consoles_id_seq OWNED BY public.live_consoles.id;
CREATE TABLE public.pins (
    id integer NOT NULL,
    user_id integer NOT NULL,
    cloud character varying(64) NOT NULL,
    server_id character varying(64) NOT NULL,
    created_at timestamp without time zone NOT NULL
);
CREATE SEQUENCE public.pins_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.pins_id_seq OWNED BY public.pins.id;
CREATE TABLE public.single_use_tokens (
    digest character varying(64) NOT NULL,
    purpose character varying(16) NOT NULL,
    user_id integer NOT NULL,
    session_id character varying(64) NOT NULL,
    server_id character varying(64) NOT NULL,
    server_name character varying(255) NOT NULL,
    cloud character varying(64) NOT NULL,
    scope character varying(255) NOT NULL,
    expires_at timestamp without time zone NOT NULL,
    used_at timestamp without time zone
);
CREATE TABLE public.user_sessions (
    id character varying(64) NOT NULL,
    user_id integer NOT NULL,
    started_at timestamp without time zone NOT NULL,
    ended_at timestamp without time zone,
    method character varying(16) DEFAULT 'local'::character varying NOT NULL,
    external_sid character varying(255),
    seen_at timestamp without time zone
);
CREATE TABLE public.users (
    id integer NOT NULL,
    username character varying(64) NOT NULL,
    password_hash character varying(255) NOT NULL,
    role character varying(16) NOT NULL,
    session_token character varying(64) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    source character varying(16) DEFAULT 'local'::character varying NOT NULL,
    external_id character varying(512),
    last_sign_in_at timestamp without time zone
);
CREATE SEQUENCE public.users_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;
ALTER TABLE ONLY public.access_rules ALTER COLUMN id SET DEFAULT nextval('public.access_rules_id_seq'::regclass);
ALTER TABLE ONLY public.audit ALTER COLUMN id SET DEFAULT nextval('public.audit_id_seq'::regclass);
ALTER TABLE ONLY public.groups ALTER COLUMN id SET DEFAULT nextval('public.groups_id_seq'::regclass);
ALTER TABLE ONLY public.instances ALTER COLUMN id SET DEFAULT nextval('public.instances_id_seq'::regclass);
ALTER TABLE ONLY public.live_consoles ALTER COLUMN id SET DEFAULT nextval('public.live_consoles_id_seq'::regclass);
ALTER TABLE ONLY public.pins ALTER COLUMN id SET DEFAULT nextval('public.pins_id_seq'::regclass);
ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.alembic_version
    ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num);
ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_pkey PRIMARY KEY (group_id, user_id);
ALTER TABLE ONLY public.groups
    ADD CONSTRAINT groups_name_key UNIQUE (name);
ALTER TABLE ONLY public.groups
    ADD CONSTRAINT groups_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.instances
    ADD CONSTRAINT instances_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.live_consoles
    ADD CONSTRAINT live_consoles_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.pins
    ADD CONSTRAINT pins_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.single_use_tokens
    ADD CONSTRAINT single_use_tokens_pkey PRIMARY KEY (digest);
ALTER TABLE ONLY public.pins
    ADD CONSTRAINT uq_pins_user_server UNIQUE (user_id, cloud, server_id);
ALTER TABLE ONLY public.user_sessions
    ADD CONSTRAINT user_sessions_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);
CREATE INDEX ix_audit_action ON public.audit USING btree (action);
CREATE INDEX ix_audit_at ON public.audit USING btree (at);
CREATE INDEX ix_audit_server_id ON public.audit USING btree (server_id);
CREATE INDEX ix_audit_username ON public.audit USING btree (username);
CREATE INDEX ix_instances_seen_at ON public.instances USING btree (seen_at);
CREATE INDEX ix_live_consoles_instance ON public.live_consoles USING btree (instance);
CREATE INDEX ix_live_consoles_seen_at ON public.live_consoles USING btree (seen_at);
CREATE INDEX ix_live_consoles_session_id ON public.live_consoles USING btree (session_id);
CREATE INDEX ix_live_consoles_user_id ON public.live_consoles USING btree (user_id);
CREATE INDEX ix_pins_user_id ON public.pins USING btree (user_id);
CREATE INDEX ix_single_use_tokens_expires_at ON public.single_use_tokens USING btree (expires_at);
CREATE INDEX ix_single_use_tokens_user_id ON public.single_use_tokens USING btree (user_id);
CREATE INDEX ix_user_sessions_external_sid ON public.user_sessions USING btree (external_sid);
CREATE INDEX ix_user_sessions_started_at ON public.user_sessions USING btree (started_at);
CREATE INDEX ix_user_sessions_user_id ON public.user_sessions USING btree (user_id);
CREATE UNIQUE INDEX ix_users_external ON public.users USING btree (source, external_id);
CREATE UNIQUE INDEX ix_users_username_folded ON public.users USING btree (lower((username)::text));
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_group_id_fkey FOREIGN KEY (group_id) REFERENCES public.groups(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_group_id_fkey FOREIGN KEY (group_id) REFERENCES public.groups(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.pins
    ADD CONSTRAINT pins_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.single_use_tokens
    ADD CONSTRAINT single_use_tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.user_sessions
    ADD CONSTRAINT user_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
INSERT INTO public.alembic_version (version_num) VALUES ('0009');
