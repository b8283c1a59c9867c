"""The applications: the heat equation and the Poisson problem on a block grid
of ranks (halo exchanges and allreduces), with their preconditioners and
multigrid transfer operators, and two problems on distributed sparse matrices
(PETSc), importable by tests, benchmarks and examples (examples/heat.py,
examples/poisson.py, examples/sparse_poisson.py and examples/fem_inverse.py
only parse arguments and call `run`).

- `grid`: the N x N grid split into m x n patches, plus the examples' helpers.
- `communication`: the MPI ops the applications make, as a parameter
  (`MPIOps`), or local stand-ins with no communication (`LocalOps`: the
  node's own limit, for benchmarks).
- `transfer`: 1-D linear interpolation, restriction and averaging between
  cell-centred grids, and their 2-D application.
- `preconditioners`: block-Jacobi, two-level and geometric multigrid, one
  interface (`Preconditioner.prepare(faces)` per solve).
- `poisson`, `heat`: the problems, their inverse problems and `run`.
- `sparse_poisson`: ADCME's MPI Poisson benchmark, `poisson`'s problem
  assembled as row stripes (`mpi_SparseTensor`) and solved by PETSc, with its
  inverse problem and `run`.
- `fem`: P1 finite elements on a Delaunay triangle mesh split into row
  stripes, with an inverse problem for the coefficient field and `run`.
"""
