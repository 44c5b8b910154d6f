-- Projections, audit log, dead letters, idempotency fallback and snapshots.
-- The event log on JetStream is the source of truth; every table here can be rebuilt from it.

CREATE TABLE IF NOT EXISTS orders (
    client_order_id   text PRIMARY KEY,
    idempotency_key   text NOT NULL,
    source            text NOT NULL,
    strategy          text,
    venue             text NOT NULL,
    symbol            text NOT NULL,
    side              text NOT NULL,
    type              text NOT NULL,
    quantity          numeric NOT NULL,
    price             numeric,
    stop_price        numeric,
    reduce_only       boolean NOT NULL DEFAULT false,
    status            text NOT NULL,
    filled_quantity   numeric NOT NULL DEFAULT 0,
    average_price     numeric,
    venue_order_id    bigint,
    reason            text,
    created_ns        bigint NOT NULL,
    updated_ns        bigint NOT NULL,
    last_event_seq    bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status, created_ns DESC);
CREATE INDEX IF NOT EXISTS orders_created_idx ON orders (created_ns DESC, client_order_id DESC);

CREATE TABLE IF NOT EXISTS fills (
    client_order_id   text NOT NULL,
    trade_id          bigint NOT NULL,
    venue_order_id    bigint,
    symbol            text NOT NULL,
    side              text NOT NULL,
    price             numeric NOT NULL,
    quantity          numeric NOT NULL,
    commission        numeric NOT NULL DEFAULT 0,
    ts_event_ns       bigint NOT NULL,
    PRIMARY KEY (client_order_id, trade_id)
);

CREATE TABLE IF NOT EXISTS positions (
    venue               text NOT NULL,
    symbol              text NOT NULL,
    quantity            numeric NOT NULL,
    average_entry_price numeric NOT NULL,
    realized_pnl        numeric NOT NULL DEFAULT 0,
    updated_ns          bigint NOT NULL,
    last_event_seq      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (venue, symbol)
);

CREATE TABLE IF NOT EXISTS audit_events (
    id            bigserial PRIMARY KEY,
    stream        text NOT NULL,
    stream_seq    bigint NOT NULL,
    subject       text NOT NULL,
    type          text NOT NULL,
    message_id    text NOT NULL,
    ts_event_ns   bigint NOT NULL,
    payload       jsonb NOT NULL,
    UNIQUE (stream, stream_seq)
);
CREATE INDEX IF NOT EXISTS audit_events_type_idx ON audit_events (type, id DESC);
CREATE INDEX IF NOT EXISTS audit_events_ts_idx ON audit_events (ts_event_ns DESC);

CREATE TABLE IF NOT EXISTS dead_letters (
    id                   bigserial PRIMARY KEY,
    stream_seq           bigint UNIQUE,
    consumer             text NOT NULL,
    subject              text NOT NULL,
    reason               text NOT NULL,
    deliveries           integer NOT NULL,
    payload              text NOT NULL,
    original_message_id  text,
    status               text NOT NULL DEFAULT 'PENDING',
    created_ns           bigint NOT NULL,
    updated_ns           bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_created_idx ON dead_letters (created_ns);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    status       text NOT NULL,
    response     jsonb,
    http_status  integer,
    created_ns   bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS snapshots (
    id           bigserial PRIMARY KEY,
    component    text NOT NULL,
    stream_seq   bigint NOT NULL,
    state        bytea NOT NULL,
    crc32c       bigint NOT NULL,
    created_ns   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_component_idx ON snapshots (component, id DESC);
