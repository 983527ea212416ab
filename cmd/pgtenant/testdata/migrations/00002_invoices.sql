-- +goose Up
CREATE TABLE invoices (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts, total numeric);
-- +goose Down
DROP TABLE invoices;
