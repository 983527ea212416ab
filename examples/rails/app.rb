# An ActiveRecord app on pgtenant (Rails without the rest of Rails: the same
# code goes in app/models and an around_action). DATABASE_URL points at the
# router, exactly as database.yml's `url:` would; nothing else is configured.
require "active_record"

ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))

class ApplicationRecord < ActiveRecord::Base
  self.abstract_class = true
end

class Project < ApplicationRecord
  has_many :tasks, dependent: :destroy
  validates :name, presence: true
end

class Task < ApplicationRecord
  belongs_to :project
end

# Tenant names the tenant for a block of work, the way an around_action
# would for a request:
#
#   class ApplicationController < ActionController::Base
#     around_action { |_, action| Tenant.with(request.headers["X-Tenant"], &action) }
#   end
#
# It opens a transaction and sets the tenant with SET LOCAL, so the tenant
# ends with the transaction and the pooled connection never carries it into
# the next request.
module Tenant
  def self.with(id)
    ActiveRecord::Base.transaction do
      conn = ActiveRecord::Base.connection
      conn.execute("SET LOCAL pgtenant.tenant = #{conn.quote(id)}")
      yield
    end
  end

  # current asks the router which tenant the transaction is for.
  def self.current
    ActiveRecord::Base.connection.select_value("SELECT current_setting('pgtenant.tenant_id')")
  end
end
