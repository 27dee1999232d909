-- hail schema. Written in the SQL that SQLite and PostgreSQL share, so one migration
-- serves both stores: the same tables, columns, constraints and index names on each.

-- Passengers and drivers. Operators are configured (HAIL_OPERATOR_TOKEN), not stored.
CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('passenger', 'driver')),
    name          TEXT NOT NULL,
    vehicle_plate TEXT,
    -- SHA-256 of the bearer token, hex. Tokens are 256-bit random, so a plain hash is
    -- enough; the token itself is shown once and never stored or logged.
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL
);

-- The current state of every trip. `seq` is the optimistic version: every change is
-- `UPDATE ... WHERE id = $1 AND seq = <seq read>` plus one trip_events row at the new seq,
-- in one transaction.
CREATE TABLE trips (
    id                   TEXT PRIMARY KEY,
    state                TEXT NOT NULL CHECK (state IN
                             ('requested', 'accepted', 'arrived', 'in_progress',
                              'completed', 'cancelled', 'expired')),
    seq                  BIGINT NOT NULL CHECK (seq >= 1),
    passenger_id         TEXT NOT NULL REFERENCES accounts (id),
    driver_id            TEXT REFERENCES accounts (id),
    pickup_lat           DOUBLE PRECISION NOT NULL,
    pickup_lng           DOUBLE PRECISION NOT NULL,
    dropoff_lat          DOUBLE PRECISION NOT NULL,
    dropoff_lng          DOUBLE PRECISION NOT NULL,
    fare_estimate_amount BIGINT NOT NULL,
    fare_amount          BIGINT,
    currency             TEXT NOT NULL,
    -- Milliseconds since the Unix epoch.
    requested_at         BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    -- Client-chosen key of the creating POST; a retry with the same key finds this row.
    idempotency_key      TEXT,
    -- A trip with a driver attached must name it.
    CHECK (state NOT IN ('accepted', 'arrived', 'in_progress') OR driver_id IS NOT NULL)
);

-- Invariant 1: a driver never has two active trips. Enforced here, not only in code.
CREATE UNIQUE INDEX trips_one_active_per_driver ON trips (driver_id)
    WHERE state IN ('accepted', 'arrived', 'in_progress');

-- A passenger waits for, or rides in, one taxi at a time.
CREATE UNIQUE INDEX trips_one_active_per_passenger ON trips (passenger_id)
    WHERE state IN ('requested', 'accepted', 'arrived', 'in_progress');

CREATE UNIQUE INDEX trips_idempotency_key ON trips (passenger_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Recovery and the operator snapshot read open and recent trips by state and age.
CREATE INDEX trips_state_updated ON trips (state, updated_at);

-- The append-only history. The primary key makes a seq impossible to write twice;
-- with the version check on trips it keeps seqs gapless from 1.
CREATE TABLE trip_events (
    trip_id TEXT NOT NULL REFERENCES trips (id),
    seq     BIGINT NOT NULL CHECK (seq >= 1),
    event   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    -- The trip as it was after this event (JSON), exactly as clients receive it.
    trip    TEXT NOT NULL,
    PRIMARY KEY (trip_id, seq)
);

-- Drivers who declined an offer for a trip, let it lapse, or gave the trip back: never
-- offered that trip again, also after a restart.
CREATE TABLE trip_exclusions (
    trip_id   TEXT NOT NULL REFERENCES trips (id),
    driver_id TEXT NOT NULL,
    reason    TEXT NOT NULL,
    PRIMARY KEY (trip_id, driver_id)
);
