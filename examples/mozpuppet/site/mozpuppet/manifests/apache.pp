# @summary The web service's front end: one Apache with mod_wsgi, set up the
#   way every vhost of the platform wants it, over puppetlabs-apache.
#
# Apps do not declare this class: `mozpuppet::apache::python_vhost` includes
# it. Every parameter has its default in Hiera (`mozpuppet::apache::<name>`),
# so ZooKeeper data reaches it by automatic class parameter lookup; the
# `wsgi_*` ones are the defaults of each python_vhost.
#
# @param listen_ip Where every vhost listens unless it says otherwise.
# @param restart_command How a changed config is applied: a graceful restart
#   finishes the requests in flight.
# @param wsgi_processes mod_wsgi daemon processes per app.
# @param wsgi_threads Threads in each of them.
# @param apps_dir Where mozagent installs app releases (`releases.apps_dir`).
# @param service_control Where no init system runs (a container): a program
#   that starts, stops and checks the service on the host's behalf, called as
#   `<service_control> start|stop|status apache2`, so Apache is not a child of
#   the puppet run (mozagent stops whatever a run leaves behind).
class mozpuppet::apache (
  String $listen_ip = '127.0.0.1',
  String $restart_command = '/usr/sbin/apache2ctl graceful',
  Integer[1, 64] $wsgi_processes = 2,
  Integer[1, 256] $wsgi_threads = 15,
  String $apps_dir = '/srv/apps',
  Optional[String[1]] $service_control = undef,
) {
  class { 'apache':
    default_vhost   => false,
    default_mods    => false,
    mpm_module      => 'event',
    service_restart => $restart_command,
    log_formats     => { 'mozagent' => '%h %l %u %t \"%r\" %>s %b %D' },
  }
  class { 'apache::mod::wsgi':
    package_name => 'libapache2-mod-wsgi-py3',
    mod_path     => '/usr/lib/apache2/modules/mod_wsgi.so',
  }
  if $service_control {
    Service <| title == 'httpd' |> {
      provider => 'base',
      enable   => undef,
      start    => "${service_control} start apache2",
      stop     => "${service_control} stop apache2",
      status   => "${service_control} status apache2",
    }
  }
}
