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
# Resolve the tree's Puppetfile with r10k at build time (1) or not (0).
export DIB_MOZ_PUPPET_R10K=${DIB_MOZ_PUPPET_R10K:-1}

# mozagent itself: a wheel wins over a source tree; the default source tree
# is the checkout this element lives in (computed in extra-data.d, where the
# element's path is known).
export DIB_MOZAGENT_WHEEL=${DIB_MOZAGENT_WHEEL:-}
export DIB_MOZAGENT_SOURCE=${DIB_MOZAGENT_SOURCE:-}
export DIB_MOZAGENT_VENV=${DIB_MOZAGENT_VENV:-/opt/mozagent/venv}
# Extra arguments for `pip install` in the chroot (e.g. --index-url URL).
export DIB_MOZAGENT_PIP_ARGS=${DIB_MOZAGENT_PIP_ARGS:-}
# A CA bundle on the build host that pip and r10k's git in the chroot trust
# while building (a private index or git server, a TLS-inspecting proxy);
# not kept in the image.  By default the one pip on the build host is told
# to use (PIP_CERT or REQUESTS_CA_BUNDLE), if any.
export DIB_MOZAGENT_CA_BUNDLE=${DIB_MOZAGENT_CA_BUNDLE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}}

# Ubuntu ships puppet and r10k in universe.
if [ "${DISTRO_NAME:-}" = ubuntu ]; then
    case ",${DIB_DEBIAN_COMPONENTS:-main}," in
        *,universe,*) ;;
        *) export DIB_DEBIAN_COMPONENTS="${DIB_DEBIAN_COMPONENTS:-main},universe" ;;
    esac
fi
