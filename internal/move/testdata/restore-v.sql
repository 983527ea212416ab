--
-- PostgreSQL database dump
--

\restrict cUj91BRd8YWHx9n7IU2Klqegbw7lac02TriUr67vktr2J2cacj0qDIdWGhfyeOW

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

-- Started on 2026-12-06 19:04:07 UTC

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- TOC entry 7 (class 2615 OID 16385)
-- Name: s1; Type: SCHEMA; Schema: -; Owner: postgres
-- Data Pos: 0
--

CREATE SCHEMA s1;


ALTER SCHEMA s1 OWNER TO postgres;

--
-- TOC entry 3377 (class 0 OID 0)
-- Dependencies: 7
-- Name: SCHEMA s1; Type: COMMENT; Schema: -; Owner: postgres
-- Data Pos: 0
--

COMMENT ON SCHEMA s1 IS 'shard one';


--
-- TOC entry 6 (class 2615 OID 16386)
-- Name: s2; Type: SCHEMA; Schema: -; Owner: postgres
-- Data Pos: 0
--

CREATE SCHEMA s2;


ALTER SCHEMA s2 OWNER TO postgres;

--
-- TOC entry 222 (class 1255 OID 16411)
-- Dependencies: 7
-- Name: f(); Type: FUNCTION; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE FUNCTION s1.f() RETURNS trigger
    LANGUAGE plpgsql
    AS $$BEGIN RETURN NEW; END$$;


ALTER FUNCTION s1.f() OWNER TO postgres;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- TOC entry 217 (class 1259 OID 16388)
-- Dependencies: 7
-- Name: accounts; Type: TABLE; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE TABLE s1.accounts (
    id integer NOT NULL,
    name text NOT NULL,
    CONSTRAINT accounts_name_check CHECK ((name <> ''::text))
);


ALTER TABLE s1.accounts OWNER TO postgres;

--
-- TOC entry 216 (class 1259 OID 16387)
-- Dependencies: 7 217
-- Name: accounts_id_seq; Type: SEQUENCE; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE s1.accounts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME s1.accounts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- TOC entry 219 (class 1259 OID 16397)
-- Dependencies: 7
-- Name: items; Type: TABLE; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE TABLE s1.items (
    id bigint NOT NULL,
    account_id integer,
    n integer,
    payload text
);


ALTER TABLE s1.items OWNER TO postgres;

--
-- TOC entry 218 (class 1259 OID 16396)
-- Dependencies: 7 219
-- Name: items_id_seq; Type: SEQUENCE; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE SEQUENCE s1.items_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE s1.items_id_seq OWNER TO postgres;

--
-- TOC entry 3380 (class 0 OID 0)
-- Dependencies: 218
-- Name: items_id_seq; Type: SEQUENCE OWNED BY; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER SEQUENCE s1.items_id_seq OWNED BY s1.items.id;


--
-- TOC entry 220 (class 1259 OID 16413)
-- Dependencies: 6
-- Name: accounts; Type: TABLE; Schema: s2; Owner: postgres
-- Data Pos: 0
--

CREATE TABLE s2.accounts (
    id integer NOT NULL
);


ALTER TABLE s2.accounts OWNER TO postgres;

--
-- TOC entry 221 (class 1259 OID 16424)
-- Dependencies: 6
-- Name: odd; Type: X; Type: TABLE; Schema: s2; Owner: postgres
-- Data Pos: 0
--

CREATE TABLE s2."odd; Type: X" (
    id integer NOT NULL
);


ALTER TABLE s2."odd; Type: X" OWNER TO postgres;

--
-- TOC entry 3213 (class 2604 OID 16400)
-- Dependencies: 218 219 219
-- Name: items id; Type: DEFAULT; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s1.items ALTER COLUMN id SET DEFAULT nextval('s1.items_id_seq'::regclass);


--
-- TOC entry 3216 (class 2606 OID 16395)
-- Dependencies: 217
-- Name: accounts accounts_pkey; Type: CONSTRAINT; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s1.accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);


--
-- TOC entry 3219 (class 2606 OID 16404)
-- Dependencies: 219
-- Name: items items_pkey; Type: CONSTRAINT; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s1.items
    ADD CONSTRAINT items_pkey PRIMARY KEY (id);


--
-- TOC entry 3221 (class 2606 OID 16417)
-- Dependencies: 220
-- Name: accounts accounts_pkey; Type: CONSTRAINT; Schema: s2; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s2.accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);


--
-- TOC entry 3223 (class 2606 OID 16428)
-- Dependencies: 221
-- Name: odd; Type: X odd; Type: X_pkey; Type: CONSTRAINT; Schema: s2; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s2."odd; Type: X"
    ADD CONSTRAINT "odd; Type: X_pkey" PRIMARY KEY (id);


--
-- TOC entry 3217 (class 1259 OID 16410)
-- Dependencies: 219
-- Name: items_account_id_idx; Type: INDEX; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE INDEX items_account_id_idx ON s1.items USING btree (account_id);


--
-- TOC entry 3225 (class 2620 OID 16412)
-- Dependencies: 219 222
-- Name: items t; Type: TRIGGER; Schema: s1; Owner: postgres
-- Data Pos: 0
--

CREATE TRIGGER t BEFORE INSERT ON s1.items FOR EACH ROW EXECUTE FUNCTION s1.f();


--
-- TOC entry 3224 (class 2606 OID 16405)
-- Dependencies: 3216 217 219
-- Name: items items_account_id_fkey; Type: FK CONSTRAINT; Schema: s1; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY s1.items
    ADD CONSTRAINT items_account_id_fkey FOREIGN KEY (account_id) REFERENCES s1.accounts(id);


--
-- TOC entry 3378 (class 0 OID 0)
-- Dependencies: 7
-- Name: SCHEMA s1; Type: ACL; Schema: -; Owner: postgres
-- Data Pos: 0
--

GRANT USAGE ON SCHEMA s1 TO app;


--
-- TOC entry 3379 (class 0 OID 0)
-- Dependencies: 219
-- Name: TABLE items; Type: ACL; Schema: s1; Owner: postgres
-- Data Pos: 0
--

GRANT SELECT ON TABLE s1.items TO app;


-- Completed on 2026-12-06 19:04:07 UTC

--
-- PostgreSQL database dump complete
--

\unrestrict cUj91BRd8YWHx9n7IU2Klqegbw7lac02TriUr67vktr2J2cacj0qDIdWGhfyeOW

