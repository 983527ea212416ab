# Runs against a pgtenant router (DATABASE_URL) whose shards have
# examples/schema applied and tenants acme, globex and initech registered.
#   DATABASE_URL=postgres://postgres@127.0.0.1:PORT/app ruby examples/rails/test.rb
require "minitest/autorun"
require_relative "app"

class TenantTest < Minitest::Test
  TAG = "rails-#{Process.pid}"

  def test_connects_with_only_the_url
    # ActiveRecord loaded its type map at connect; a statement that needs no
    # shard runs without a tenant.
    assert_match(/PostgreSQL/, ActiveRecord::Base.connection.select_value("SELECT version()"))
  end

  def test_models_per_tenant
    %w[acme globex initech].each do |t|
      Tenant.with(t) do
        p = Project.create!(name: "#{TAG}-#{t}")
        p.tasks.create!(title: "first")
        p.tasks.create!(title: "second")
      end
    end
    %w[acme globex initech].each do |t|
      Tenant.with(t) do
        assert_equal t, Tenant.current
        mine = Project.where(tenant_id: t).where("name LIKE ?", "#{TAG}%").includes(:tasks).to_a
        assert_equal ["#{TAG}-#{t}"], mine.map(&:name)
        assert_equal %w[first second], mine.first.tasks.order(:id).map(&:title)
      end
    end
  end

  def test_session_set_and_reset
    conn = ActiveRecord::Base.connection
    conn.execute("SET pgtenant.tenant = 'globex'")
    begin
      assert_equal "globex", Tenant.current
      assert_kind_of Integer, Project.where(tenant_id: "globex").count
    ensure
      conn.execute("RESET pgtenant.tenant")
    end
    err = assert_raises(ActiveRecord::StatementInvalid) { Project.count }
    assert_equal "3D000", err.cause.result.error_field(PG::Result::PG_DIAG_SQLSTATE)
  end

  def test_rollback_keeps_nothing
    before = Tenant.with("acme") { Project.where(tenant_id: "acme").count }
    Tenant.with("acme") do
      Project.create!(name: "#{TAG}-gone")
      raise ActiveRecord::Rollback
    end
    assert_equal before, Tenant.with("acme") { Project.where(tenant_id: "acme").count }
  end

  def test_unknown_tenant
    err = assert_raises(ActiveRecord::StatementInvalid) { Tenant.with("nobody") { Project.count } }
    assert_equal "42704", err.cause.result.error_field(PG::Result::PG_DIAG_SQLSTATE)
  end
end
