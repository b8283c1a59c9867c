// Distributed sparse matrices on PETSc (adcme_mpi/wrappers/sparse.py), ADCME's
// mpi_SparseTensor: rank r owns rows ilower..ilower+m-1 of a global N x N
// matrix, given as local CSR (row_ptr, global column indices, values); the
// stripes tile 0..N-1 in rank order. Vectors are this rank's m entries.
//
//   MPISparseMatVec      y = A x or A^T x (MatMult, MatMultTranspose)
//   MPISparseSolve       x = A^-1 b or A^-T b (KSPSolve, KSPSolveTranspose)
//   MPISparseGather      the vector's entries at this rank's nonzero columns
//                        (a VecScatter, PETSc's ghost exchange)
//   MPISparseScatterAdd  its adjoint: sums back to the owners (reverse scatter)
//
// Adjoint pairs: the product and the solve are their own adjoints with
// `transpose` flipped; gather <-> scatter-add. The gradients with respect to
// the values are built in Python from these ops (so second derivatives work).
//
// Setup reuse: one System (MPIAIJ matrix, work vectors, scatter, solvers) per
// communicator family and sparsity pattern, kept across calls. New values
// are written in place; PETSc then sets the preconditioner up again at the
// next solve. The backward pass's transpose solve finds the forward solve's
// System unchanged and reuses its preconditioner. Whether a System is reused
// is decided by all ranks together (PETSc objects are collective).
//
// Every PETSc error comes back as a TensorFlow error (PETSc's error handler
// records the message and returns; nothing aborts). PETSc is initialised on
// first use with PETSC_COMM_WORLD = MPI_COMM_SELF (initialisation is then not
// a collective) and finalised by adcme_mpi_petsc_finalize before MPI is.
#include <petscksp.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/substitute.h"
#include "c_api.h"
#include "common.h"
#include "tensorflow/core/framework/op.h"

namespace adcme_mpi {
namespace {

using tensorflow::DataTypeString;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::ShapeHandle;

// ---- interfaces and shape functions ----

// (row_ptr, cols, values, vector, token): the vector keeps its shape.
absl::Status VectorShape(InferenceContext* c) {
  ShapeHandle v;
  for (int i = 0; i < 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &v));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &v));
  c->set_output(0, v);
  return absl::OkStatus();
}

// (row_ptr, cols, vector, token) -> one entry per nonzero.
absl::Status GatherShape(InferenceContext* c) {
  ShapeHandle v;
  for (int i = 0; i < 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &v));
  c->set_output(0, c->Vector(c->Dim(c->input(1), 0)));
  return absl::OkStatus();
}

// (row_ptr, cols, per-nonzero data, token) -> this rank's m rows.
absl::Status ScatterShape(InferenceContext* c) {
  ShapeHandle v;
  for (int i = 0; i < 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &v));
  DimensionHandle rows;
  TF_RETURN_IF_ERROR(c->Subtract(c->Dim(c->input(0), 0), 1, &rows));
  c->set_output(0, c->Vector(rows));
  return absl::OkStatus();
}

#define SPARSE_OP(Name, data, out, shape_fn) \
  REGISTER_OP(Name)                          \
      .Input("row_ptr: int64")               \
      .Input("cols: int64")                  \
      .Input(data)                           \
      .Input("token: float")                 \
      .Output(out)                           \
      .Output("token_out: float")            \
      .Attr("T: {float, double}")            \
      .Attr("N: int")                        \
      .Attr("ilower: int")                   \
      .Attr("comm: int")                     \
      .Attr("grad_comm: int")                \
      .SetIsStateful()                       \
      .SetShapeFn(WithToken<shape_fn>)

SPARSE_OP("MPISparseGather", "x: T", "at_cols: T", GatherShape)
    .Doc("The vector's entries at this rank's nonzero columns (from their owners).");
SPARSE_OP("MPISparseScatterAdd", "at_cols: T", "x: T", ScatterShape)
    .Doc("Adjoint of MPISparseGather: per-nonzero data summed into the owners' rows.");

REGISTER_OP("MPISparseMatVec")
    .Input("row_ptr: int64")
    .Input("cols: int64")
    .Input("values: T")
    .Input("x: T")
    .Input("token: float")
    .Output("y: T")
    .Output("token_out: float")
    .Attr("T: {float, double}")
    .Attr("N: int")
    .Attr("ilower: int")
    .Attr("transpose: bool = false")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<VectorShape>)
    .Doc("y = A x (or A^T x) for the row-distributed sparse matrix A.");

REGISTER_OP("MPISparseSolve")
    .Input("row_ptr: int64")
    .Input("cols: int64")
    .Input("values: T")
    .Input("b: T")
    .Input("token: float")
    .Output("x: T")
    .Output("token_out: float")
    .Attr("T: {float, double}")
    .Attr("N: int")
    .Attr("ilower: int")
    .Attr("transpose: bool = false")
    .Attr("solver: string")
    .Attr("rtol: float")
    .Attr("atol: float")
    .Attr("max_it: int")
    .Attr("options_prefix: string = ''")
    .Attr("comm: int")
    .Attr("grad_comm: int")
    .SetIsStateful()
    .SetShapeFn(WithToken<VectorShape>)
    .Doc("x = A^-1 b (or A^-T b) with PETSc's KSP; non-convergence is an error.");

// ---- PETSc: start, errors, finish ----

std::mutex petsc_mu;  // PETSc is not thread-safe; the ordering token already serialises
bool petsc_started = false;
std::string petsc_last_error;  // what PETSc's error handler last reported

PetscErrorCode RecordError(MPI_Comm, int line, const char* function, const char* file,
                           PetscErrorCode code, PetscErrorType type, const char* message, void*) {
  // the first report of an error is the one with the cause; the callers up
  // the stack report it again with PETSC_ERROR_REPEAT
  if (type == PETSC_ERROR_INITIAL)
    petsc_last_error =
        absl::StrCat(message ? message : "", " (in ", function, ", ", file, ":", line, ")");
  return code;
}

absl::Status PetscStatus(const CallSite& site, PetscErrorCode code, const char* call) {
  if (code == 0) return absl::OkStatus();
  const char* text = nullptr;
  PetscErrorMessage(code, &text, nullptr);
  std::string detail = petsc_last_error;
  petsc_last_error.clear();
  return absl::InternalError(absl::StrCat(site.Describe(), " | ", call, " failed: PETSc error ",
                                          code, " (", text ? text : "?", ")",
                                          detail.empty() ? "" : ": ", detail));
}

#define PETSC_OK(site, call) TF_RETURN_IF_ERROR(PetscStatus(site, (call), #call))

absl::Status StartPetsc(const CallSite& site) {
  if (petsc_started) return absl::OkStatus();
  PetscBool initialized = PETSC_FALSE;
  PETSC_OK(site, PetscInitialized(&initialized));
  if (!initialized) {
    // not a collective: PETSc's world is this process; every object is
    // created on the communicator of the op that needs it
    PETSC_COMM_WORLD = MPI_COMM_SELF;
    PETSC_OK(site, PetscInitializeNoArguments());
    // keep the signal handlers of Python and TensorFlow
    PETSC_OK(site, PetscPopSignalHandler());
  }
  PETSC_OK(site, PetscPushErrorHandler(RecordError, nullptr));
  // How PETSc finds out who sends to whom (PetscCommBuildTwoSided: GAMG's
  // set-up, matrix assembly): its default here posts MPI_ANY_SOURCE receives,
  // which never completed with MPICH 5 (ch4:ucx) across hosts over TCP; the
  // 2-host run hung in GAMG's set-up, also with "allreduce". The "ibarrier"
  // variant (MPI_Issend, MPI_Iprobe, MPI_Ibarrier) works there and on every
  // MPI tested. A -build_twosided of the user's (PETSC_OPTIONS) still wins.
  PetscBool chosen = PETSC_FALSE;
  PETSC_OK(site, PetscOptionsHasName(nullptr, nullptr, "-build_twosided", &chosen));
  if (!chosen) PETSC_OK(site, PetscOptionsSetValue(nullptr, "-build_twosided", "ibarrier"));
  petsc_started = true;
  return absl::OkStatus();
}

// ---- the System: a matrix pattern, its PETSc objects and their reuse ----

struct Pattern {
  int64_t N = 0, ilower = 0, m = 0;
  std::vector<PetscInt> row_ptr, cols;
  bool operator==(const Pattern& o) const {
    return N == o.N && ilower == o.ilower && m == o.m && row_ptr == o.row_ptr && cols == o.cols;
  }
};

struct System {
  int64_t serial = 0;  // its creation's number, the same on every rank
  Pattern pattern;
  Mat A = nullptr;
  Vec x = nullptr, y = nullptr;  // work vectors in A's column and row layouts
  std::vector<PetscScalar> values;
  bool has_values = false;
  VecScatter to_cols = nullptr;  // x -> its entries at the nonzero columns
  Vec at_cols = nullptr;         // sequential, one entry per nonzero
  std::map<std::string, KSP> solvers;
  int64_t last_used = 0;

  ~System() {
    for (auto& entry : solvers) KSPDestroy(&entry.second);
    VecScatterDestroy(&to_cols);
    VecDestroy(&at_cols);
    VecDestroy(&x);
    VecDestroy(&y);
    MatDestroy(&A);
  }
};

// Per communicator family (its CommFamily::sparse_cache, under petsc_mu):
// its Systems, at most kMaxSystems (the least recently used goes first;
// every rank evicts the same one, since every rank makes the same calls in
// the same order).
constexpr size_t kMaxSystems = 8;
struct SparseCache {
  int64_t next_serial = 1;
  int64_t clock = 0;
  std::vector<std::unique_ptr<System>> systems;
};
// The family's cache, made on first use. Call with petsc_mu held.
SparseCache& CacheOf(CommFamily* family) {
  if (!family->sparse_cache) family->sparse_cache = std::make_shared<SparseCache>();
  return *static_cast<SparseCache*>(family->sparse_cache.get());
}

// Statistics of the last solve, for the benchmarks (adcme_mpi_sparse_last_solve).
struct SolveStats {
  int64_t iterations = 0;
  double seconds = 0;  // inside KSPSolve / KSPSolveTranspose
  int64_t setups = 0;  // Systems created so far
};
SolveStats last_solve;

template <typename T>
const T* Data(const Tensor& t) {
  return reinterpret_cast<const T*>(t.tensor_data().data());
}

// The sparsity pattern every sparse op takes, read and checked on this rank.
absl::Status ReadPattern(OpKernelContext* ctx, const CallSite& site, int64_t N, int64_t ilower,
                         Pattern* pattern) {
  Pattern& p = *pattern;
  const Tensor& row_ptr = ctx->input(0);
  const Tensor& cols = ctx->input(1);
  p.N = N;
  p.ilower = ilower;
  p.m = row_ptr.NumElements() - 1;
  if (p.m < 1) {
    return site.InvalidArgument(absl::StrCat("this rank owns no rows (row_ptr has ",
                                             row_ptr.NumElements(),
                                             " entries); every rank of the "
                                             "communicator must own at least one row"));
  }
  const int64_t* rp = Data<int64_t>(row_ptr);
  const int64_t* cp = Data<int64_t>(cols);
  const int64_t nnz = cols.NumElements();
  if (rp[0] != 0 || rp[p.m] != nnz) {
    return site.InvalidArgument(absl::StrCat("argument 'row_ptr' must start at 0 and end at ", nnz,
                                             " (the number of nonzeros); got ", rp[0], " .. ",
                                             rp[p.m]));
  }
  if (N > static_cast<int64_t>(PETSC_MAX_INT) || nnz > static_cast<int64_t>(PETSC_MAX_INT)) {
    return site.InvalidArgument(
        absl::StrCat("N = ", N, " or ", nnz, " nonzeros exceed this PETSc's index range (",
                     PETSC_MAX_INT, "); use a PETSc configured --with-64-bit-indices"));
  }
  p.row_ptr.assign(rp, rp + p.m + 1);
  p.cols.resize(nnz);
  for (int64_t i = 0; i < p.m; ++i) {
    if (rp[i + 1] < rp[i]) {
      return site.InvalidArgument(absl::StrCat("argument 'row_ptr' decreases at local row ", i,
                                               " (global row ", ilower + i, ")"));
    }
    for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
      if (cp[k] < 0 || cp[k] >= N) {
        return site.InvalidArgument(absl::StrCat("argument 'cols' has column ", cp[k], " in row ",
                                                 ilower + i, ", out of range [0, ", N - 1, "]"));
      }
      if (k > rp[i] && cp[k] <= cp[k - 1]) {
        return site.InvalidArgument(
            absl::StrCat("argument 'cols' must be strictly increasing within a row; row ",
                         ilower + i, " has column ", cp[k], " after ", cp[k - 1]));
      }
      p.cols[k] = static_cast<PetscInt>(cp[k]);
    }
  }
  return absl::OkStatus();
}

absl::Status CheckLength(const CallSite& site, const char* arg, const Tensor& t, int64_t want,
                         const char* what) {
  if (t.NumElements() == want) return absl::OkStatus();
  return site.InvalidArgument(absl::StrCat("argument '", arg, "' has ", t.NumElements(),
                                           " entries; it must have ", want, " (", what, ")"));
}

// What the ranks agree on before any PETSc call: the checked-collective
// sequence with the op's global arguments (a divergent program, a different
// N or solver is an error on every rank; a rank whose own input is bad has
// already failed, and the kernel base made every rank fail with its
// message), then every rank's stripe and reusable System, gathered on the
// op's communicator.
constexpr int kRowWidth = 3;  // ilower, m, serial of a reusable System (0: none)

std::string DescribeStripes(const std::vector<int64_t>& rows, int size) {
  std::ostringstream s;
  for (int r = 0; r < size; ++r) {
    const int64_t lo = rows[r * kRowWidth], m = rows[r * kRowWidth + 1];
    s << (r ? ", " : "") << "rank " << r << ": " << lo << ".." << lo + m - 1;
  }
  return s.str();
}

// An argument every rank must pass alike, as one word of the check's
// payload, and how a message shows that word.
struct Agreed {
  std::string name;
  int64_t word;
  std::function<std::string(int64_t)> show;
};

std::string ShowInt(int64_t word) { return absl::StrCat(word); }

absl::Status Agree(const CallSite& site, OpKind kind, const std::vector<Agreed>& agreed,
                   const Pattern& pattern, System** system) {
  std::vector<int64_t> payload;
  for (const Agreed& a : agreed) payload.push_back(a.word);
  std::vector<std::vector<int64_t>> rows;
  TF_RETURN_IF_ERROR(AgreeAcrossRanks(site, kind, payload, &rows));
  if (!rows.empty()) {
    for (size_t i = 0; i < agreed.size(); ++i) {
      bool same = true;
      for (const auto& row : rows) same = same && row[i] == payload[i];
      if (same) continue;
      std::string got;
      for (int r = 0; r < site.size; ++r)
        absl::StrAppend(&got, r ? ", " : " ", "rank ", r, ": ", agreed[i].show(rows[r][i]));
      return site.InvalidArgument(absl::Substitute(messages::kSameEverywhere, agreed[i].name, got));
    }
  }
  SparseCache& family = CacheOf(site.family);
  System* found = nullptr;
  for (auto& s : family.systems)
    if (s->pattern == pattern) found = s.get();
  const int64_t mine[kRowWidth] = {pattern.ilower, pattern.m, found ? found->serial : 0};
  std::vector<int64_t> all(static_cast<size_t>(kRowWidth) * site.size);
  TF_RETURN_IF_ERROR(site.Check(
      MPI_Allgather(mine, kRowWidth, MPI_INT64_T, all.data(), kRowWidth, MPI_INT64_T, site.comm),
      "MPI_Allgather"));
  // the stripes must tile 0..N-1 in rank order
  int64_t next = 0;
  for (int r = 0; r < site.size; ++r) {
    if (all[r * kRowWidth] != next)
      return site.InvalidArgument(absl::StrCat(
          "the row stripes must tile rows 0..", pattern.N - 1,
          " in rank order, without gap or overlap; rank ", r, " starts at row ", all[r * kRowWidth],
          " where row ", next, " is next (", DescribeStripes(all, site.size), ")"));
    next += all[r * kRowWidth + 1];
  }
  if (next != pattern.N)
    return site.InvalidArgument(absl::StrCat("the row stripes cover rows 0..", next - 1,
                                             " but N = ", pattern.N, " (",
                                             DescribeStripes(all, site.size), ")"));
  bool reuse = found != nullptr;
  for (int r = 0; r < site.size && reuse; ++r) reuse = all[r * kRowWidth + 2] == found->serial;
  if (!reuse) {
    // every rank creates one, in the same call: PETSc objects are collective
    if (family.systems.size() >= kMaxSystems) {
      auto oldest = std::min_element(
          family.systems.begin(), family.systems.end(),
          [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
      family.systems.erase(oldest);
    }
    auto s = std::make_unique<System>();
    s->serial = family.next_serial++;
    s->pattern = pattern;
    const Pattern& p = s->pattern;
    PETSC_OK(site, MatCreate(site.comm, &s->A));
    PETSC_OK(site, MatSetSizes(s->A, p.m, p.m, p.N, p.N));
    PETSC_OK(site, MatSetType(s->A, MATAIJ));
    // COO assembly: PETSc keeps the map from our nonzeros to its storage, so
    // new values go in with one vectorised MatSetValuesCOO (a MatSetValues
    // per row cost more than 5% of a solve at 300 x 300 rows per rank)
    std::vector<PetscInt> coo_rows(p.cols.size()), coo_cols(p.cols);
    for (int64_t i = 0; i < p.m; ++i)
      for (PetscInt k = p.row_ptr[i]; k < p.row_ptr[i + 1]; ++k)
        coo_rows[k] = static_cast<PetscInt>(p.ilower + i);
    PETSC_OK(site, MatSetPreallocationCOO(s->A, static_cast<PetscCount>(coo_cols.size()),
                                          coo_rows.data(), coo_cols.data()));
    PETSC_OK(site, MatCreateVecs(s->A, &s->x, &s->y));
    ++last_solve.setups;
    found = s.get();
    family.systems.push_back(std::move(s));
  }
  found->last_used = ++family.clock;
  *system = found;
  return absl::OkStatus();
}

// Writes new values into the matrix (only when they changed on some rank: the
// transpose solve of a backward pass finds them unchanged and keeps the
// preconditioner).
template <typename T>
absl::Status SetValues(const CallSite& site, System* s, const Tensor& values) {
  const Pattern& p = s->pattern;
  TF_RETURN_IF_ERROR(
      CheckLength(site, "values", values, static_cast<int64_t>(p.cols.size()), "one per nonzero"));
  std::vector<PetscScalar> v(p.cols.size());
  const T* in = Data<T>(values);
  for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<PetscScalar>(in[k]);
  // whether to write them is decided by all ranks together: writing is
  // collective, and one rank's values may change while another's do not
  int changed = !s->has_values || v != s->values;
  TF_RETURN_IF_ERROR(site.Check(
      MPI_Allreduce(MPI_IN_PLACE, &changed, 1, MPI_INT, MPI_MAX, site.comm), "MPI_Allreduce"));
  if (!changed) return absl::OkStatus();
  PETSC_OK(site, MatSetValuesCOO(s->A, v.data(), INSERT_VALUES));
  s->values = std::move(v);
  s->has_values = true;
  return absl::OkStatus();
}

template <typename T>
absl::Status ToVec(const CallSite& site, const Tensor& t, Vec v) {
  PetscScalar* a = nullptr;
  PETSC_OK(site, VecGetArray(v, &a));
  const T* in = Data<T>(t);
  for (int64_t i = 0; i < t.NumElements(); ++i) a[i] = static_cast<PetscScalar>(in[i]);
  PETSC_OK(site, VecRestoreArray(v, &a));
  return absl::OkStatus();
}

template <typename T>
absl::Status FromVec(const CallSite& site, Vec v, Tensor* t) {
  const PetscScalar* a = nullptr;
  PETSC_OK(site, VecGetArrayRead(v, &a));
  T* out = reinterpret_cast<T*>(DataOf(*t));
  for (int64_t i = 0; i < t->NumElements(); ++i) out[i] = static_cast<T>(PetscRealPart(a[i]));
  PETSC_OK(site, VecRestoreArrayRead(v, &a));
  return absl::OkStatus();
}

absl::Status EnsureScatter(const CallSite& site, System* s) {
  if (s->to_cols) return absl::OkStatus();
  const Pattern& p = s->pattern;
  IS is = nullptr;
  PETSC_OK(site, ISCreateGeneral(PETSC_COMM_SELF, static_cast<PetscInt>(p.cols.size()),
                                 p.cols.data(), PETSC_COPY_VALUES, &is));
  PETSC_OK(site, VecCreateSeq(PETSC_COMM_SELF, static_cast<PetscInt>(p.cols.size()), &s->at_cols));
  const PetscErrorCode code = VecScatterCreate(s->x, is, s->at_cols, nullptr, &s->to_cols);
  ISDestroy(&is);
  return PetscStatus(site, code, "VecScatterCreate");
}

// ---- kernels ----

std::string ShowBool(int64_t word) { return word ? "true" : "false"; }

// (kSolvers, kSolverCount: the op table's SOLVERS)
int64_t SolverIndex(const std::string& name) {
  for (int64_t i = 0; i < kSolverCount; ++i)
    if (name == kSolvers[i]) return i;
  return -1;
}

uint64_t TextHash(const std::string& text) {
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char ch : text) hash = (hash ^ ch) * 1099511628211ULL;
  return hash >> 1;
}

int64_t Bits(double value) {
  int64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

class SparseKernel : public MpiKernel {
 public:
  SparseKernel(OpKernelConstruction* c, OpKind kind) : MpiKernel(c), kind_(kind) {
    OP_REQUIRES_OK(c, c->GetAttr("N", &N_));
    OP_REQUIRES_OK(c, c->GetAttr("ilower", &ilower_));
    OP_REQUIRES_OK(c, c->GetAttr("T", &dtype_));
  }

 protected:
  absl::Status Run(OpKernelContext* ctx, const CallSite& site) final {
    // PETSc's calls block inside PETSc and cannot be polled: the watchdog
    // watches the whole op (and still ends the job if a peer never comes)
    WatchedSection watched(site.Describe(), "every rank to join this sparse op (inside PETSc)");
    std::lock_guard<std::mutex> lock(petsc_mu);
    TF_RETURN_IF_ERROR(StartPetsc(site));
    // local validation first: a rank with bad input fails here, and the
    // kernel base makes every rank fail with its message
    Pattern pattern;
    TF_RETURN_IF_ERROR(Validate(site));
    TF_RETURN_IF_ERROR(ReadPattern(ctx, site, N_, ilower_, &pattern));
    TF_RETURN_IF_ERROR(CheckData(site, ctx, pattern));
    std::vector<Agreed> agreed = {
        {"N", N_, ShowInt},
        {"dtype", dtype_, [](int64_t t) { return DataTypeString(static_cast<DataType>(t)); }}};
    AddAgreed(&agreed);
    System* system = nullptr;
    TF_RETURN_IF_ERROR(Agree(site, kind_, agreed, pattern, &system));
    return Compute(ctx, site, system);
  }
  // This op's own checks of its attributes and data inputs (local).
  virtual absl::Status Validate(const CallSite& site) { return absl::OkStatus(); }
  virtual absl::Status CheckData(const CallSite& site, OpKernelContext* ctx, const Pattern& p) = 0;
  // Further arguments every rank must pass alike (at most 10 in all).
  virtual void AddAgreed(std::vector<Agreed>* agreed) {}
  virtual absl::Status Compute(OpKernelContext* ctx, const CallSite& site, System* s) = 0;

  const OpKind kind_;
  int64_t N_ = 0, ilower_ = 0;
  DataType dtype_;
};

#define DISPATCH(call) (dtype_ == tensorflow::DT_FLOAT ? call<float> : call<double>)

class GatherKernel : public SparseKernel {
 public:
  explicit GatherKernel(OpKernelConstruction* c) : SparseKernel(c, OpKind::kMPISparseGather) {}
  absl::Status CheckData(const CallSite& site, OpKernelContext* ctx, const Pattern& p) override {
    return CheckLength(site, "x", ctx->input(2), p.m, "this rank's rows");
  }
  absl::Status Compute(OpKernelContext* ctx, const CallSite& site, System* s) override {
    TF_RETURN_IF_ERROR(EnsureScatter(site, s));
    TF_RETURN_IF_ERROR(DISPATCH(ToVec)(site, ctx->input(2), s->x));
    PETSC_OK(site, VecScatterBegin(s->to_cols, s->x, s->at_cols, INSERT_VALUES, SCATTER_FORWARD));
    PETSC_OK(site, VecScatterEnd(s->to_cols, s->x, s->at_cols, INSERT_VALUES, SCATTER_FORWARD));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(
        ctx->allocate_output(0, TensorShape({static_cast<int64_t>(s->pattern.cols.size())}), &out));
    return DISPATCH(FromVec)(site, s->at_cols, out);
  }
};

class ScatterAddKernel : public SparseKernel {
 public:
  explicit ScatterAddKernel(OpKernelConstruction* c)
      : SparseKernel(c, OpKind::kMPISparseScatterAdd) {}
  absl::Status CheckData(const CallSite& site, OpKernelContext* ctx, const Pattern& p) override {
    return CheckLength(site, "at_cols", ctx->input(2), static_cast<int64_t>(p.cols.size()),
                       "one per nonzero");
  }
  absl::Status Compute(OpKernelContext* ctx, const CallSite& site, System* s) override {
    TF_RETURN_IF_ERROR(EnsureScatter(site, s));
    TF_RETURN_IF_ERROR(DISPATCH(ToVec)(site, ctx->input(2), s->at_cols));
    PETSC_OK(site, VecSet(s->x, 0.0));
    PETSC_OK(site, VecScatterBegin(s->to_cols, s->at_cols, s->x, ADD_VALUES, SCATTER_REVERSE));
    PETSC_OK(site, VecScatterEnd(s->to_cols, s->at_cols, s->x, ADD_VALUES, SCATTER_REVERSE));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({s->pattern.m}), &out));
    return DISPATCH(FromVec)(site, s->x, out);
  }
};

// The product and the solve: values (input 2) and a vector (input 3).
class MatrixKernel : public SparseKernel {
 public:
  MatrixKernel(OpKernelConstruction* c, OpKind kind, const char* vector)
      : SparseKernel(c, kind), vector_(vector) {
    OP_REQUIRES_OK(c, c->GetAttr("transpose", &transpose_));
  }
  absl::Status CheckData(const CallSite& site, OpKernelContext* ctx, const Pattern& p) override {
    TF_RETURN_IF_ERROR(CheckLength(site, "values", ctx->input(2),
                                   static_cast<int64_t>(p.cols.size()), "one per nonzero"));
    return CheckLength(site, vector_, ctx->input(3), p.m, "this rank's rows");
  }
  absl::Status Compute(OpKernelContext* ctx, const CallSite& site, System* s) override {
    TF_RETURN_IF_ERROR(DISPATCH(SetValues)(site, s, ctx->input(2)));
    // x and y have the same layout (square, rows and columns split alike)
    TF_RETURN_IF_ERROR(DISPATCH(ToVec)(site, ctx->input(3), s->x));
    TF_RETURN_IF_ERROR(Apply(site, s, s->x, s->y));
    Tensor* out = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(0, TensorShape({s->pattern.m}), &out));
    return DISPATCH(FromVec)(site, s->y, out);
  }
  virtual absl::Status Apply(const CallSite& site, System* s, Vec in, Vec out) = 0;

 protected:
  bool transpose_ = false;
  const char* vector_;
};

class MatVecKernel : public MatrixKernel {
 public:
  explicit MatVecKernel(OpKernelConstruction* c) : MatrixKernel(c, OpKind::kMPISparseMatVec, "x") {}
  void AddAgreed(std::vector<Agreed>* agreed) override {
    agreed->push_back({"transpose", transpose_, ShowBool});
  }
  absl::Status Apply(const CallSite& site, System* s, Vec in, Vec out) override {
    if (transpose_) return PetscStatus(site, MatMultTranspose(s->A, in, out), "MatMultTranspose");
    return PetscStatus(site, MatMult(s->A, in, out), "MatMult");
  }
};

class SolveKernel : public MatrixKernel {
 public:
  explicit SolveKernel(OpKernelConstruction* c) : MatrixKernel(c, OpKind::kMPISparseSolve, "b") {
    float rtol = 0, atol = 0;
    OP_REQUIRES_OK(c, c->GetAttr("solver", &solver_));
    OP_REQUIRES_OK(c, c->GetAttr("rtol", &rtol));
    OP_REQUIRES_OK(c, c->GetAttr("atol", &atol));
    OP_REQUIRES_OK(c, c->GetAttr("max_it", &max_it_));
    OP_REQUIRES_OK(c, c->GetAttr("options_prefix", &prefix_));
    rtol_ = rtol;
    atol_ = atol;
    config_ = absl::StrCat(solver_, "|", rtol_, "|", atol_, "|", max_it_, "|", prefix_);
  }
  absl::Status Validate(const CallSite& site) override {
    if (SolverIndex(solver_) < 0)
      return site.InvalidArgument(absl::Substitute(messages::kSolver, solver_, kSolverNames));
#ifndef PETSC_HAVE_HYPRE
    if (solver_ == "BoomerAMG")
      return site.InvalidArgument(
          "solver 'BoomerAMG' needs a PETSc with hypre; this one has none "
          "(use 'GAMG', or build against a PETSc configured with hypre)");
#endif
    return absl::OkStatus();
  }
  void AddAgreed(std::vector<Agreed>* agreed) override {
    auto show_double = [](int64_t word) {
      double value;
      std::memcpy(&value, &word, sizeof value);
      return absl::StrCat(value);
    };
    const std::string prefix = prefix_;
    agreed->insert(
        agreed->end(),
        {{"transpose", transpose_, ShowBool},
         {"solver", SolverIndex(solver_),
          [](int64_t i) { return i >= 0 && i < kSolverCount ? kSolvers[i] : "?"; }},
         {"rtol", Bits(rtol_), show_double},
         {"atol", Bits(atol_), show_double},
         {"max_it", max_it_, ShowInt},
         {"options_prefix", static_cast<int64_t>(TextHash(prefix_)), [prefix](int64_t word) {
            return static_cast<int64_t>(TextHash(prefix)) == word ? absl::StrCat("'", prefix, "'")
                                                                  : std::string("(another prefix)");
          }}});
  }
  absl::Status Apply(const CallSite& site, System* s, Vec b, Vec x) override {
    KSP ksp = nullptr;
    TF_RETURN_IF_ERROR(Solver(site, s, &ksp));
    const double start = MPI_Wtime();
    // CG needs a symmetric matrix, so its transpose solve is the solve
    // itself, with the same preconditioner. That also keeps hypre's
    // BoomerAMG out of its transpose (HYPRE_BoomerAMGSolveT), which returned
    // zeros as a converged answer with Debian's PETSc 3.18 (its default
    // smoother has no transpose). GMRES (or any other KSP an options prefix
    // picks) solves with the transpose.
    PetscBool cg = PETSC_FALSE;
    PETSC_OK(site, PetscObjectTypeCompare(reinterpret_cast<PetscObject>(ksp), KSPCG, &cg));
    if (transpose_ && !cg) {
      PETSC_OK(site, KSPSolveTranspose(ksp, b, x));
    } else {
      PETSC_OK(site, KSPSolve(ksp, b, x));
    }
    last_solve.seconds = MPI_Wtime() - start;
    KSPConvergedReason reason;
    PetscInt iterations = 0;
    PetscReal residual = 0;
    PETSC_OK(site, KSPGetConvergedReason(ksp, &reason));
    PETSC_OK(site, KSPGetIterationNumber(ksp, &iterations));
    PETSC_OK(site, KSPGetResidualNorm(ksp, &residual));
    last_solve.iterations = iterations;
    if (reason < 0)
      return site.InvalidArgument(absl::StrCat(
          "the ", transpose_ ? "transpose " : "",
          "solve did not converge: ", KSPConvergedReasons[reason], " after ", iterations,
          " iterations, residual norm ", residual, " (solver '", solver_, "', rtol ", rtol_,
          ", atol ", atol_, ", max_it ", max_it_, prefix_.empty() ? "" : ", options prefix '",
          prefix_, prefix_.empty() ? "" : "'", ")"));
    return absl::OkStatus();
  }

 private:
  // The System's solver for this op's settings, made on first use; one that
  // failed to be made (bad options) is destroyed, not kept.
  absl::Status Solver(const CallSite& site, System* s, KSP* out) {
    auto found = s->solvers.find(config_);
    if (found != s->solvers.end()) {
      *out = found->second;
      return absl::OkStatus();
    }
    KSP ksp = nullptr;
    const absl::Status status = Configure(site, s, &ksp);
    if (!status.ok()) {
      KSPDestroy(&ksp);
      return status;
    }
    *out = s->solvers[config_] = ksp;
    return absl::OkStatus();
  }

  absl::Status Configure(const CallSite& site, System* s, KSP* made) {
    KSP& ksp = *made;
    {
      PC pc = nullptr;
      PETSC_OK(site, KSPCreate(PetscObjectComm(reinterpret_cast<PetscObject>(s->A)), &ksp));
      PETSC_OK(site, KSPSetOperators(ksp, s->A, s->A));
      PETSC_OK(site, KSPGetPC(ksp, &pc));
      if (solver_ == "GMRES") {
        PETSC_OK(site, KSPSetType(ksp, KSPGMRES));  // PETSc's default PC: block Jacobi + ILU(0)
      } else {
        PETSC_OK(site, KSPSetType(ksp, KSPCG));
        if (solver_ == "GAMG") PETSC_OK(site, PCSetType(pc, PCGAMG));
        if (solver_ == "CG") PETSC_OK(site, PCSetType(pc, PCJACOBI));
#ifdef PETSC_HAVE_HYPRE
        if (solver_ == "BoomerAMG") {
          PETSC_OK(site, PCSetType(pc, PCHYPRE));
          PETSC_OK(site, PCHYPRESetType(pc, "boomeramg"));
        }
#endif
      }
      PETSC_OK(site, KSPSetTolerances(ksp, rtol_, atol_, PETSC_DEFAULT, max_it_));
      PETSC_OK(site, KSPSetInitialGuessNonzero(ksp, PETSC_FALSE));
      if (!prefix_.empty()) {  // full control: the options database overrides the above
        PETSC_OK(site, KSPSetOptionsPrefix(ksp, prefix_.c_str()));
        PETSC_OK(site, KSPSetFromOptions(ksp));
      }
    }
    return absl::OkStatus();
  }

  std::string solver_, prefix_, config_;
  double rtol_ = 0, atol_ = 0;
  int64_t max_it_ = 0;
};

#define SPARSE_KERNEL(Name, Kernel)                                                            \
  REGISTER_KERNEL_BUILDER(ADCME_MPI_CPU_KERNEL(Name).HostMemory("row_ptr").HostMemory("cols"), \
                          Kernel)
SPARSE_KERNEL("MPISparseGather", GatherKernel);
SPARSE_KERNEL("MPISparseScatterAdd", ScatterAddKernel);
SPARSE_KERNEL("MPISparseMatVec", MatVecKernel);
SPARSE_KERNEL("MPISparseSolve", SolveKernel);

}  // namespace
}  // namespace adcme_mpi

// ---- C entry points (ops/c_api.h) ----

ADCME_MPI_C_API int adcme_mpi_petsc_info(char* buffer, int length) {
  char version[256] = "";
  PetscGetVersion(version, sizeof version);
#ifdef PETSC_HAVE_HYPRE
  const int hypre = 1;
#else
  const int hypre = 0;
#endif
  return std::snprintf(buffer, length, "%s\x1f%d", version, hypre);
}

ADCME_MPI_C_API int adcme_mpi_petsc_options(const char* options, char* buffer, int length) {
  using namespace adcme_mpi;
  std::lock_guard<std::mutex> lock(petsc_mu);
  CallSite site;
  site.op = "adcme_mpi.petsc_options";
  MPI_Comm_rank(MPI_COMM_WORLD, &site.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &site.size);
  absl::Status status = StartPetsc(site);
  if (status.ok())
    status =
        PetscStatus(site, PetscOptionsInsertString(nullptr, options), "PetscOptionsInsertString");
  if (status.ok()) return 0;
  std::snprintf(buffer, length, "%s", std::string(status.message()).c_str());
  return 1;
}

ADCME_MPI_C_API int64_t adcme_mpi_sparse_last_solve(double* seconds, int64_t* setups) {
  using namespace adcme_mpi;
  *seconds = last_solve.seconds;
  *setups = last_solve.setups;
  return last_solve.iterations;
}

ADCME_MPI_C_API void adcme_mpi_petsc_finalize(void) {
  using namespace adcme_mpi;
  std::lock_guard<std::mutex> lock(petsc_mu);
  if (!petsc_started) return;
  // every family's Systems (their PETSc objects), before PETSc's end
  for (const std::shared_ptr<CommFamily>& family : AllFamilies()) family->sparse_cache.reset();
  PetscBool finalized = PETSC_FALSE;
  PetscFinalized(&finalized);
  if (!finalized) PetscFinalize();
  petsc_started = false;
}
