// Copyright 2020-2024, NVIDIA CORPORATION & AFFILIATES. All rights reserved.
//
// Redistribution and use in source and binary forms, with or without
// modification, are permitted provided that the following conditions
// are met:
//  * Redistributions of source code must retain the above copyright
//    notice, this list of conditions and the following disclaimer.
//  * Redistributions in binary form must reproduce the above copyright
//    notice, this list of conditions and the following disclaimer in the
//    documentation and/or other materials provided with the distribution.
//  * Neither the name of NVIDIA CORPORATION nor the names of its
//    contributors may be used to endorse or promote products derived
//    from this software without specific prior written permission.
//
// THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS ``AS IS'' AND ANY
// EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
// IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR
// PURPOSE ARE DISCLAIMED.  IN NO EVENT SHALL THE COPYRIGHT OWNER OR
// CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
// EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO,
// PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR
// PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY
// OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT
// (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
// OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

#pragma once

#include "triton/backend/backend_common.h"
#include "triton/core/tritonserver.h"

// Suppress warnings in torch headers
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma warning(push, 0)
#include <torch/csrc/jit/codegen/cuda/interface.h>
#include <torch/csrc/jit/codegen/fuser/interface.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>  // One-stop header for TorchScript
#pragma warning(pop)
#pragma GCC diagnostic pop

namespace triton { namespace backend { namespace pytorch {

TRITONSERVER_DataType ConvertTorchTypeToDataType(
    const torch::ScalarType& ttype);
std::pair<bool, torch::ScalarType> ConvertDataTypeToTorchType(
    const TRITONSERVER_DataType dtype);
std::pair<bool, torch::ScalarType> ModelConfigDataTypeToTorchType(
    const std::string& data_type_str);

#ifdef TRITON_ENABLE_GPU
TRITONSERVER_Error* ConvertCUDAStatusToTritonError(
    cudaError_t cuda_error, TRITONSERVER_Error_Code code, const char* msg);
#endif

// If the key 'mkey' is present in 'params' then update 'value' with the
// value associated with that key. If 'mkey' is not present in 'params' then
// no update is made to 'value'.
TRITONSERVER_Error* ParseParameter(
    triton::common::TritonJson::Value& params, const std::string& mkey,
    bool* value);

// If the key 'mkey' is present in 'params' then update 'value' with the
// value associated with that key. If 'mkey' is not present in 'params' then
// 'value' is set to 'default_value'.
TRITONSERVER_Error* ParseParameter(
    triton::common::TritonJson::Value& params, const std::string& mkey,
    int* value);

}}}  // namespace triton::backend::pytorch
