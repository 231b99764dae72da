# @summary The database service's front end: one MariaDB on loopback, over
#   puppetlabs-mysql, with no anonymous or test accounts.
#
# Apps do not declare this class: `mozpuppet::mysql::database` includes it.
# Its parameters come from Hiera (`mozpuppet::mysql::<name>`).
#
# @param bind_address Where it listens for TCP (apps use its Unix socket).
# @param port Its TCP port.
# @param service_control As `mozpuppet::apache::service_control`, for mariadb.
class mozpuppet::mysql (
  Stdlib::IP::Address $bind_address = '127.0.0.1',
  Stdlib::Port $port = 3306,
  Optional[String[1]] $service_control = undef,
) {
  class { 'mysql::server':
    package_name            => 'mariadb-server',
    service_name            => 'mariadb',
    remove_default_accounts => true,
    override_options        => {
      'mysqld' => {
        'bind-address' => $bind_address,
        'port'         => $port,
      },
    },
    restart                 => true,
  }
  if $service_control {
    Service <| title == 'mysqld' |> {
      provider => 'base',
      enable   => undef,
      start    => "${service_control} start mariadb",
      stop     => "${service_control} stop mariadb",
      status   => "${service_control} status mariadb",
    }
  }
}
