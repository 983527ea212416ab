-- The example apps' schema: applied to every shard by `pgtenant migrate up --dir examples/schema`.
-- tenant_id defaults to the tenant the router set for the transaction, so inserts need not name it.

-- +goose Up
CREATE TABLE projects (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL DEFAULT current_setting('pgtenant.tenant_id'),
    name       text NOT NULL,
    created_at timestamp(6) NOT NULL DEFAULT now(),
    updated_at timestamp(6) NOT NULL DEFAULT now()
);
CREATE INDEX projects_tenant ON projects (tenant_id);

CREATE TABLE tasks (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL DEFAULT current_setting('pgtenant.tenant_id'),
    project_id bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    created_at timestamp(6) NOT NULL DEFAULT now(),
    updated_at timestamp(6) NOT NULL DEFAULT now()
);
CREATE INDEX tasks_tenant ON tasks (tenant_id, project_id);

-- +goose Down
DROP TABLE tasks;
DROP TABLE projects;
