# @summary A Python WSGI app served by Apache: the mod_wsgi daemon settings
#   every vhost of the platform wants, with the app's `current` release (the
#   one mozagent installed) as its root.
#
# The app runs in its own mod_wsgi daemon processes, as its own user, with its
# release's virtualenv (`venv/` in the release, made by the app's install
# script) and the release dir on its path. A release switch (the `current`
# link moved by mozagent) changes the WSGI script's file, which mod_wsgi sees
# on the next request and answers by restarting the app's daemons: no Apache
# restart, no failed request.
#
# @param app The app's name: its release dir and its daemon process group.
# @param vhost_name The ServerName.
# @param port Where it listens.
# @param ip Which address it listens on (`mozpuppet::apache::listen_ip`).
# @param user The OS user its code runs as (mozagent's `releases.user`).
# @param group Its group. Apache's own user must be in it: mozagent makes the
#   app's dir 0750 with that group, and Apache's workers look up the script.
# @param processes mod_wsgi daemon processes (`mozpuppet::apache::wsgi_processes`).
# @param threads Threads per process (`mozpuppet::apache::wsgi_threads`).
# @param wsgi_script The WSGI entry point, relative to the release.
# @param env Values the app reads from its WSGI environ (SetEnv): from the
#   app's data in ZooKeeper, `<app>::env` in Hiera.
define mozpuppet::apache::python_vhost (
  Pattern[/\A[a-z][a-z0-9_-]{0,63}\z/] $app,
  Stdlib::Fqdn $vhost_name = $title,
  Stdlib::Port $port = 8080,
  Optional[String] $ip = undef,
  String $user = $app,
  String $group = $user,
  Optional[Integer[1, 64]] $processes = undef,
  Optional[Integer[1, 256]] $threads = undef,
  Pattern[/\A[^\/][^\s]*\z/] $wsgi_script = 'wsgi.py',
  Hash[
    Pattern[/\A[A-Za-z_][A-Za-z0-9_]{0,63}\z/],
    Variant[Numeric, Boolean, Pattern[/\A[^"\\\r\n]{0,1000}\z/]]
  ] $env = lookup("${app}::env", Hash, 'hash', {}),
) {
  include mozpuppet::apache
  $root = "${mozpuppet::apache::apps_dir}/${app}/current"
  $options = {
    'processes'    => pick($processes, $mozpuppet::apache::wsgi_processes),
    'threads'      => pick($threads, $mozpuppet::apache::wsgi_threads),
    'display-name' => "%{GROUP}",
    'user'         => $user,
    'group'        => $group,
    'python-home'  => "${root}/venv",
    'python-path'  => $root,
    # Not the release: before the first one is installed it does not exist,
    # and a daemon that cannot enter its home waits out a restart delay.
    'home'         => '/',
  }
  apache::vhost { $vhost_name:
    servername                  => $vhost_name,
    ip                          => pick($ip, $mozpuppet::apache::listen_ip),
    port                        => $port,
    add_listen                  => true,
    docroot                     => $root,
    manage_docroot              => false,
    options                     => ['FollowSymLinks'],
    access_log_format           => 'mozagent',
    setenv                      => $env.map |$k, $v| { "${k} \"${v}\"" }.sort,
    wsgi_daemon_process         => { $app => $options },
    wsgi_process_group          => $app,
    wsgi_application_group      => '%{GLOBAL}',
    wsgi_script_aliases         => { '/' => "${root}/${wsgi_script}" },
  }
}
