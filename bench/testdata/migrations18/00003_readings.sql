-- Hourly readings, one table per energy type: they differ in units and in
-- the extra quantities each kind of meter reports.

-- +goose Up
CREATE TABLE electricity_readings (
    meter_id    bigint NOT NULL REFERENCES meters ON DELETE CASCADE,
    read_at     timestamptz NOT NULL,
    kwh         numeric(14, 3) NOT NULL,
    peak_kw     numeric(10, 3),
    power_factor real,
    PRIMARY KEY (meter_id, read_at)
);
CREATE INDEX electricity_readings_read_at ON electricity_readings (read_at);

CREATE TABLE gas_readings (
    meter_id    bigint NOT NULL REFERENCES meters ON DELETE CASCADE,
    read_at     timestamptz NOT NULL,
    m3          numeric(14, 3) NOT NULL,
    calorific_kwh_per_m3 real,
    PRIMARY KEY (meter_id, read_at)
);
CREATE INDEX gas_readings_read_at ON gas_readings (read_at);

CREATE TABLE water_readings (
    meter_id    bigint NOT NULL REFERENCES meters ON DELETE CASCADE,
    read_at     timestamptz NOT NULL,
    m3          numeric(14, 3) NOT NULL,
    hot         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (meter_id, read_at)
);
CREATE INDEX water_readings_read_at ON water_readings (read_at);

CREATE TABLE heat_readings (
    meter_id    bigint NOT NULL REFERENCES meters ON DELETE CASCADE,
    read_at     timestamptz NOT NULL,
    kwh         numeric(14, 3) NOT NULL,
    flow_temp_c real,
    return_temp_c real,
    PRIMARY KEY (meter_id, read_at)
);
CREATE INDEX heat_readings_read_at ON heat_readings (read_at);

-- +goose Down
DROP TABLE heat_readings;
DROP TABLE water_readings;
DROP TABLE gas_readings;
DROP TABLE electricity_readings;
