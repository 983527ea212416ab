# Loaded by e2e/rubypgsuite (rspec --require) in place of the server that
# ruby-pg's spec/helpers.rb starts with initdb: the specs connect to the
# address the runner gives in RUBYPG_SUITE_* instead (a pgtenant router, or
# a node of the runner's cluster for the direct baseline). Nothing here is
# ruby-pg's code: it reopens the helper's PostgresServer class so that its
# constructor starts nothing.
require File.join(ENV.fetch('RUBYPG_SUITE_SRC'), 'spec', 'helpers')

class PG::TestingHelpers::PostgresServer
	def initialize( name, port: 0, postgresql_conf: '' )
		@name = name
		@port = Integer(ENV.fetch('RUBYPG_SUITE_PORT'))
		tls = ENV.fetch('RUBYPG_SUITE_TLS')
		# The router and the runner's node listen on TCP only.
		@unix_socket = nil
		@conninfo = "host=localhost port=#{@port} dbname=test " \
			"sslrootcert=#{tls}/ca.crt sslcert=#{tls}/client.crt sslkey=#{tls}/client.key"
	end

	def create_test_db; end

	def teardown; end
end
