# A stand-in for a platform front-end module: its parameters come from Hiera
# (automatic parameter lookup), i.e. from the app's data in ZooKeeper.
class demoapp (
  String  $root,
  String  $vhost_name,
  Integer $port,
  Integer $workers   = 2,
  String  $greeting  = 'hello',
) {
  file { $root:
    ensure => directory,
  }
  file { "${root}/${vhost_name}.conf":
    ensure  => file,
    content => epp('demoapp/vhost.conf.epp', {
      'vhost_name' => $vhost_name,
      'port'       => $port,
      'workers'    => $workers,
      'greeting'   => $greeting,
    }),
  }
}
