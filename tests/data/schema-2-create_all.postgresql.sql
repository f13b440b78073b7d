-- Release 2 (stop 14, up to 26eee57): the schema its create_all made, before migrations. For upgrade tests.
CREATE TABLE public.access_rules (
    id integer NOT NULL,
    user_id integer,
    group_id integer,
    cloud character varying(64) NOT NULL,
    name_pattern character varying(255) NOT NULL,
    meta_key character varying(255) NOT NULL,
    meta_value character varying(255) NOT NULL
);
CREATE SEQUENCE public.access_rules_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.access_rules_id_seq OWNED BY public.access_rules.id;
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
    user_agent character varying(255) NOT NULL
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
CREATE TABLE public.user_sessions (
    id character varying(64) NOT NULL,
    user_id integer NOT NULL,
    started_at timestamp without time zone NOT NULL,
    ended_at timestamp without time zone
);
CREATE TABLE public.users (
    id integer NOT NULL,
    username character varying(64) NOT NULL,
    password_hash character varying(255) NOT NULL,
    role character varying(16) NOT NULL,
    session_token character varying(64) NOT NULL,
    created_at timestamp without time zone NOT NULL
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
ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_pkey PRIMARY KEY (group_id, user_id);
ALTER TABLE ONLY public.groups
    ADD CONSTRAINT groups_name_key UNIQUE (name);
ALTER TABLE ONLY public.groups
    ADD CONSTRAINT groups_pkey PRIMARY KEY (id);
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
CREATE INDEX ix_user_sessions_started_at ON public.user_sessions USING btree (started_at);
CREATE INDEX ix_user_sessions_user_id ON public.user_sessions USING btree (user_id);
CREATE UNIQUE INDEX ix_users_username_folded ON public.users USING btree (lower((username)::text));
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_group_id_fkey FOREIGN KEY (group_id) REFERENCES public.groups(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.access_rules
    ADD CONSTRAINT access_rules_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_group_id_fkey FOREIGN KEY (group_id) REFERENCES public.groups(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.group_members
    ADD CONSTRAINT group_members_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.user_sessions
    ADD CONSTRAINT user_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
