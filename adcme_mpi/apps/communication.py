"""The MPI ops the applications make, passed in as a parameter: `MPIOps`
(adcme_mpi's, the default) or `LocalOps`, stand-ins of the same shapes with
no communication (every rank works alone: the node's own limit, measured by
benchmarks/scaling.py --no-comm)."""

import tensorflow as tf

from .. import wrappers


class MPIOps:
    """adcme_mpi's ops, as the applications call them."""

    def halo_exchange(self, u, m, n, fill_value=0.0, width=1, comm=None):
        return wrappers.mpi_halo_exchange(u, m, n, fill_value=fill_value, width=width, comm=comm)

    def allreduce(self, a, comm=None):
        return wrappers.mpi_allreduce(a, comm=comm)

    def bcast(self, a, root=0, comm=None):
        return wrappers.mpi_bcast(a, root, comm=comm)

    def sum(self, a, root=0, comm=None):
        return wrappers.mpi_sum(a, root, comm=comm)


class LocalOps(MPIOps):
    """No communication: a halo exchange pads with fill_value, collectives
    return their input. The same arithmetic as with MPIOps, on every rank alone."""

    def halo_exchange(self, u, m, n, fill_value=0.0, width=1, comm=None):
        pad = [[0, 0]] * (len(u.shape) - 2) + [[width, width]] * 2
        return tf.pad(u, pad, constant_values=tf.cast(fill_value, u.dtype))

    def allreduce(self, a, comm=None):
        return tf.identity(a)

    def bcast(self, a, root=0, comm=None):
        return tf.identity(a)

    def sum(self, a, root=0, comm=None):
        return tf.identity(a)
