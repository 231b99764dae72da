# shellcheck shell=bash
# Defaults of the mozagent element; every value can be set in the
# environment of disk-image-create (see README.rst).

# The puppet tree baked into the image.
if [ -z "${DIB_MOZ_PUPPET_REMOTE:-}" ]; then
    echo "ERROR: mozagent element: DIB_MOZ_PUPPET_REMOTE is not set" \
        "(git URL or path of the puppet tree to bake into the image)" >&2
    exit 1
fi
export DIB_MOZ_PUPPET_REMOTE
export DIB_MOZ_PUPPET_REF=${DIB_MOZ_PUPPET_REF:-master}
export DIB_MOZ_PUPPET_DIR=${DIB_MOZ_PUPPET_DIR:-/opt/mozpuppet}
# What resolves the tree's Puppetfile into its modules/ at build time:
# librarian-puppet (the default, the blueprint's tool), r10k, or none.
# DIB_MOZ_PUPPET_R10K is the older setting, kept as a deprecated alias when
# DIB_MOZ_PUPPET_RESOLVER is not set: 0 means none, 1 means r10k (what it
# meant when r10k was the only resolver).  Set both and the resolver wins.
if [ -z "${DIB_MOZ_PUPPET_RESOLVER:-}" ]; then
    case "${DIB_MOZ_PUPPET_R10K:-}" in
        "") DIB_MOZ_PUPPET_RESOLVER=librarian-puppet ;;
        0) DIB_MOZ_PUPPET_RESOLVER=none ;;
        1) DIB_MOZ_PUPPET_RESOLVER=r10k ;;
        *)
            echo "ERROR: mozagent element: DIB_MOZ_PUPPET_R10K=$DIB_MOZ_PUPPET_R10K" \
                "is neither 0 nor 1 (it is deprecated: set" \
                "DIB_MOZ_PUPPET_RESOLVER=librarian-puppet, r10k or none)" >&2
            exit 1
            ;;
    esac
    if [ -n "${DIB_MOZ_PUPPET_R10K:-}" ]; then
        echo "WARNING: mozagent element: DIB_MOZ_PUPPET_R10K is deprecated:" \
            "DIB_MOZ_PUPPET_R10K=$DIB_MOZ_PUPPET_R10K is taken as" \
            "DIB_MOZ_PUPPET_RESOLVER=$DIB_MOZ_PUPPET_RESOLVER" >&2
    fi
elif [ -n "${DIB_MOZ_PUPPET_R10K:-}" ]; then
    case "$DIB_MOZ_PUPPET_R10K:$DIB_MOZ_PUPPET_RESOLVER" in
        0:none | 1:r10k) ;;
        *)
            echo "WARNING: mozagent element: DIB_MOZ_PUPPET_R10K=$DIB_MOZ_PUPPET_R10K" \
                "(deprecated) is ignored: DIB_MOZ_PUPPET_RESOLVER=$DIB_MOZ_PUPPET_RESOLVER" >&2
            ;;
    esac
fi
case "$DIB_MOZ_PUPPET_RESOLVER" in
    librarian-puppet | r10k | none) ;;
    *)
        echo "ERROR: mozagent element: DIB_MOZ_PUPPET_RESOLVER=$DIB_MOZ_PUPPET_RESOLVER" \
            "is not one of librarian-puppet, r10k, none (what resolves the puppet" \
            "tree's Puppetfile at build time)" >&2
        exit 1
        ;;
esac
export DIB_MOZ_PUPPET_RESOLVER
# Distribution packages the tree's backend modules come from, installed in
# the chroot before its Puppetfile is resolved (install.d/54): by default
# Debian's puppetlabs-apache and puppetlabs-mysql modules (they bring stdlib,
# concat and translate), whose /usr/share/puppet/modules.available
# directories the reference tree's Puppetfile names as :path sources.  Set
# but empty: none.  Each word must be a Debian package name.
DIB_MOZ_PUPPET_PACKAGES=${DIB_MOZ_PUPPET_PACKAGES-puppet-module-puppetlabs-apache puppet-module-puppetlabs-mysql}
# Split on any whitespace, newlines included.
read -r -d '' -a _mozagent_packages <<< "$DIB_MOZ_PUPPET_PACKAGES" || true
_mozagent_joined=""
for _mozagent_package in ${_mozagent_packages[@]+"${_mozagent_packages[@]}"}; do
    # Debian policy: lowercase letters, digits, '+', '-' and '.', at least
    # two characters, the first a letter or digit (no versions, no options).
    if ! [[ $_mozagent_package =~ ^[a-z0-9][a-z0-9+.-]+$ ]]; then
        echo "ERROR: mozagent element: DIB_MOZ_PUPPET_PACKAGES: '$_mozagent_package'" \
            "is not a Debian package name (lowercase letters, digits, '+', '-' and '.'," \
            "at least two characters, starting with a letter or digit; space-separated" \
            "names only, no versions or options)" >&2
        exit 1
    fi
    _mozagent_joined+="${_mozagent_joined:+ }$_mozagent_package"
done
# One space between names.
DIB_MOZ_PUPPET_PACKAGES=$_mozagent_joined
unset _mozagent_packages _mozagent_package _mozagent_joined
export DIB_MOZ_PUPPET_PACKAGES

# mozagent itself: a wheel wins over a source tree; the default source tree
# is the checkout this element lives in (computed in extra-data.d, where the
# element's path is known).
export DIB_MOZAGENT_WHEEL=${DIB_MOZAGENT_WHEEL:-}
export DIB_MOZAGENT_SOURCE=${DIB_MOZAGENT_SOURCE:-}
export DIB_MOZAGENT_VENV=${DIB_MOZAGENT_VENV:-/opt/mozagent/venv}
# Extra arguments for `pip install` in the chroot (e.g. --index-url URL).
export DIB_MOZAGENT_PIP_ARGS=${DIB_MOZAGENT_PIP_ARGS:-}
# A CA bundle on the build host that pip and the Puppetfile resolver (its git,
# and Ruby's https for the Forge) in the chroot trust while building (a private index or git server, a TLS-inspecting proxy);
# not kept in the image.  By default the one pip on the build host is told
# to use (PIP_CERT or REQUESTS_CA_BUNDLE), if any.
export DIB_MOZAGENT_CA_BUNDLE=${DIB_MOZAGENT_CA_BUNDLE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}}

# Ubuntu ships puppet, r10k and librarian-puppet in universe.
if [ "${DISTRO_NAME:-}" = ubuntu ]; then
    case ",${DIB_DEBIAN_COMPONENTS:-main}," in
        *,universe,*) ;;
        *) export DIB_DEBIAN_COMPONENTS="${DIB_DEBIAN_COMPONENTS:-main},universe" ;;
    esac
fi
