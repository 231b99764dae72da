# @summary An app's database, reached by the app's OS user over MariaDB's Unix
#   socket: the server checks who is connecting, so no password exists to be
#   leaked into facts, Hiera, the app's environment or its release.
#
# @param user The OS user the app's code (install script, WSGI daemons,
#   orders) runs as; it gets the database's privileges.
# @param database The database's name.
# @param privileges What the user may do there.
define mozpuppet::mysql::database (
  String $user,
  Pattern[/\A[a-z][a-z0-9_]{0,63}\z/] $database = $title,
  Array[String, 1] $privileges = ['ALL'],
) {
  include mozpuppet::mysql
  mysql_database { $database:
    ensure  => present,
    charset => 'utf8mb4',
    collate => 'utf8mb4_general_ci',
    require => Class['mysql::server'],
  }
  mysql_user { "${user}@localhost":
    ensure  => present,
    plugin  => 'unix_socket',
    require => Class['mysql::server'],
  }
  mysql_grant { "${user}@localhost/${database}.*":
    user       => "${user}@localhost",
    table      => "${database}.*",
    privileges => $privileges,
    require    => [Mysql_database[$database], Mysql_user["${user}@localhost"]],
  }
}
