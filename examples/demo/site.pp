# The demo's manifest: one front-end class, parameters from Hiera.
include demoapp
