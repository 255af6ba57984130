// ONNX Runtime front end: ai.mlprune::BlockSparseLinear(X, values, row_ptr, col_idx, [bias],
// [residual]) with attributes out_features and activation ("none" or "gelu", optional), run on
// ORT's intra-op pool via KernelContext_ParallelFor.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "block_sparse_linear.h"

namespace {

constexpr const char* kDomain = "ai.mlprune";
constexpr int kResidualInput = 5;

OrtStatusPtr error(const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT,
                                    ("BlockSparseLinear: " + msg).c_str());
}

// glibc answers hardware_concurrency() by reading /sys/devices/system/cpu/online: once per
// call, that was 6 of the 12 us an empty-matrix call took.
int64_t max_parts() {
  static const int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());
  return cores;
}

void run_part(void* plan, size_t part) {
  static_cast<const mlprune::Plan*>(plan)->run_part(static_cast<int64_t>(part));
}

struct Kernel {
  int64_t out_features = 0;
  mlprune::Activation activation = mlprune::Activation::kNone;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) try {
    Ort::KernelContext ctx(context);
    const Ort::ConstValue x = ctx.GetInput(0), values = ctx.GetInput(1),
                          row_ptr = ctx.GetInput(2), col_idx = ctx.GetInput(3);
    Ort::ConstValue bias{nullptr}, residual{nullptr};
    if (ctx.GetInputCount() > 4) bias = ctx.GetInput(4);
    if (ctx.GetInputCount() > kResidualInput) residual = ctx.GetInput(kResidualInput);
    if (!x || !values || !row_ptr || !col_idx) return error("X, values, row_ptr and col_idx are required");

    std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> vs = values.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.empty()) return error("X must have at least one dimension");
    mlprune::BsrLinearArgs a;
    a.in_features = xs.back();
    a.out_features = out_features;
    a.rows = 1;
    for (size_t d = 0; d + 1 < xs.size(); ++d) a.rows *= xs[d];
    a.values = values.GetTensorData<float>();
    a.row_ptr = row_ptr.GetTensorData<int64_t>();
    a.col_idx = col_idx.GetTensorData<int64_t>();
    a.nnzb = static_cast<int64_t>(col_idx.GetTensorTypeAndShapeInfo().GetElementCount());
    a.block = vs.size() == 3 ? vs[1] : 0;
    int64_t bias_len = -1;
    if (bias) {
      a.bias = bias.GetTensorData<float>();
      bias_len = static_cast<int64_t>(bias.GetTensorTypeAndShapeInfo().GetElementCount());
    }
    const int64_t rp_len =
        static_cast<int64_t>(row_ptr.GetTensorTypeAndShapeInfo().GetElementCount());
    const std::string err = mlprune::validate(a, vs, rp_len, a.nnzb, bias_len);
    if (!err.empty()) return error(err);

    xs.back() = out_features;
    a.activation = activation;
    if (residual) {
      if (residual.GetTensorTypeAndShapeInfo().GetShape() != xs)
        return error("residual must have the output's shape [..., out_features]");
      a.residual = residual.GetTensorData<float>();
    }
    Ort::UnownedValue y = ctx.GetOutput(0, xs);
    if (a.rows == 0) return nullptr;
    a.x = x.GetTensorData<float>();
    a.y = y.GetTensorMutableData<float>();
    const mlprune::Plan plan(a, max_parts());
    if (plan.num_parts() == 1) {
      plan.run_part(0);
    } else {
      ctx.ParallelFor(&run_part, static_cast<size_t>(plan.num_parts()), 0,
                      const_cast<mlprune::Plan*>(&plan));
    }
    return nullptr;
  } catch (const Ort::Exception& e) {
    return error(e.what());
  } catch (const std::exception& e) {
    return error(e.what());
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  // The residual's buffer may become the output's: where nothing else reads it later, ORT lets the
  // kernel write y over the residual lines it has just read, with no write to a cold buffer
  // (BERT-base at batch 8 x 128 on an AVX2 VM: about -4 % end to end).
  Op() {
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[1]{kResidualInput};
      *output_index = new int[1]{0};
      return 1;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const try {
    std::unique_ptr<Kernel> k(new Kernel);
    const Ort::ConstKernelInfo ki(info);
    k->out_features = ki.GetAttribute<int64_t>("out_features");
    std::string act = "none";
    try {
      act = ki.GetAttribute<std::string>("activation");
    } catch (const Ort::Exception&) {  // optional attribute
    }
    if (!mlprune::parse_activation(act, &k->activation)) return error("unknown activation '" + act + "' (use none or gelu)");
    *kernel = k.release();
    return nullptr;
  } catch (const std::exception& e) {
    return error(std::string("needs an int attribute out_features: ") + e.what());
  }

  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) try {
    Ort::ShapeInferContext::Shape shape = ctx.GetInputShape(0);
    if (shape.empty()) return nullptr;
    shape.back() = Ort::ShapeInferContext::SymbolicInteger(ctx.GetAttrInt("out_features"));
    return ctx.SetOutputShape(0, shape).release();
  } catch (const std::exception& e) {
    return error(e.what());
  }

  const char* GetName() const { return "BlockSparseLinear"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return (i == 2 || i == 3) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                              : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= 4 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* old = api_base->GetApi(1);
    const std::string msg = std::string("libmlprune_ort was built against ORT API version ") +
                            std::to_string(ORT_API_VERSION) + "; this ONNX Runtime (" +
                            api_base->GetVersionString() + ") is older. Upgrade onnxruntime.";
    return old ? old->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  static Op op;
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&op);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
