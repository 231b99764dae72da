# The root manifest of the platform's puppet tree: what a host serves is data.
# Each app's data in ZooKeeper (through Hiera) names its vhosts and databases,
# and every one is a front end of `mozpuppet`: apps never declare a backend
# module's resources themselves.
#
#   mozpuppet::python_vhosts:  {<vhost name>: {app: <app>, port: 8080, ...}}
#   mozpuppet::databases:      {<database>: {user: <the app's OS user>}}
lookup('mozpuppet::databases', Hash, 'hash', {}).each |$name, $params| {
  mozpuppet::mysql::database { $name:
    * => $params,
  }
}
lookup('mozpuppet::python_vhosts', Hash, 'hash', {}).each |$name, $params| {
  mozpuppet::apache::python_vhost { $name:
    * => $params,
  }
}
