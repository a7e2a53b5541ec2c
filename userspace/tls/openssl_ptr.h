#pragma once
// RAII for the OpenSSL objects atlasgate touches: one unique_ptr alias per
// type, each with a deleter that calls the matching *_free. Every raw pointer
// OpenSSL hands us with a reference ("get1", "new", "dup") goes straight into
// one of these.

#include <memory>
#include <string>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace atlasgate::tls {

namespace detail {
template <class T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const noexcept { Free(p); }
};
}  // namespace detail

using BioPtr = std::unique_ptr<BIO, detail::Deleter<BIO, BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, detail::Deleter<BIGNUM, BN_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, detail::Deleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, detail::Deleter<X509, X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, detail::Deleter<X509_NAME, X509_NAME_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, detail::Deleter<X509_STORE, X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, detail::Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, detail::Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, detail::Deleter<GENERAL_NAMES, GENERAL_NAMES_free>>;
using NameConstraintsPtr = std::unique_ptr<NAME_CONSTRAINTS, detail::Deleter<NAME_CONSTRAINTS, NAME_CONSTRAINTS_free>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, detail::Deleter<SSL_CTX, SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, detail::Deleter<SSL, SSL_free>>;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, detail::Deleter<SSL_SESSION, SSL_SESSION_free>>;

// Drains this thread's OpenSSL error queue into one line ("a; b; c"), or
// "no OpenSSL error" when it is empty. Call it right after the failing call.
std::string opensslErrors();

// PEM encoding of a certificate; empty on failure.
std::string certToPem(X509* cert);

}  // namespace atlasgate::tls
