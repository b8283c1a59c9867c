"""The applications: the heat equation and the Poisson problem on a block grid
of ranks (halo exchanges and allreduces), with their preconditioners and
multigrid transfer operators, importable by tests, benchmarks and examples
(examples/heat.py and examples/poisson.py only parse arguments and call
`run`).

- `grid`: the N x N grid split into m x n patches, plus the examples' helpers.
- `communication`: the MPI ops the applications make, as a parameter
  (`MPIOps`), or local stand-ins with no communication (`LocalOps`: the
  node's own limit, for benchmarks).
- `transfer`: 1-D linear interpolation, restriction and averaging between
  cell-centred grids, and their 2-D application.
- `preconditioners`: block-Jacobi, two-level and geometric multigrid, one
  interface (`Preconditioner.prepare(faces)` per solve).
- `poisson`, `heat`: the problems, their inverse problems and `run`.
"""
